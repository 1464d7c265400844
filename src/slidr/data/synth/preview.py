"""Two overview pictures of a generated world: a bird's-eye view of one scan by class, and one camera image
with the lidar points projected on it, coloured by depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slidr.data.classes import NUSCENES_CLASSES, NUSCENES_LEARNING_MAP
from slidr.data.projection import project_points


def write_previews(directory: Path, frame: dict) -> list[Path]:
    """Write ``bev.png`` and ``camera_depth.png`` into ``directory``.

    Parameters
    ----------
    directory : output folder (created).
    frame : ``points`` (N, >=3) lidar frame, ``category`` (N,) raw nuScenes indices, ``image`` (H, W, 3) uint8,
        ``lidar_to_camera`` (4, 4), ``intrinsic`` (3, 3).

    Returns
    -------
    the two paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    points = frame["points"]
    evaluation = NUSCENES_LEARNING_MAP[frame["category"].astype(np.int64)]
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[: len(NUSCENES_CLASSES)]
    fig, ax = plt.subplots(figsize=(9, 9), dpi=100)
    ignored = evaluation == 0
    ax.scatter(points[ignored, 0], points[ignored, 1], s=0.3, c="lightgrey", label="ignore")
    for k, name in enumerate(NUSCENES_CLASSES):
        mask = evaluation == k + 1
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=0.3, color=colors[k], label=name)
    ax.set_aspect("equal")
    ax.set_xlim(-50, 50)
    ax.set_ylim(-50, 50)
    ax.set_xlabel("x (m, lidar frame)")
    ax.set_ylabel("y (m, lidar frame)")
    ax.set_title("one lidar scan, coloured by class")
    ax.legend(loc="upper right", fontsize=7, markerscale=12, ncol=2)
    bev = directory / "bev.png"
    fig.savefig(bev, bbox_inches="tight")
    plt.close(fig)

    image = frame["image"]
    height, width = image.shape[:2]
    transform = frame["lidar_to_camera"]
    index, pixel_rc = project_points(points, transform, frame["intrinsic"], (height, width))
    depth = points[index, :3].astype(np.float64) @ transform[2, :3] + transform[2, 3]
    fig, ax = plt.subplots(figsize=(12, 12 * height / width), dpi=100)
    ax.imshow(image)
    dots = ax.scatter(pixel_rc[:, 1], pixel_rc[:, 0], c=depth, s=1.5, cmap="turbo", vmin=0,
                      vmax=min(60.0, float(depth.max()) if depth.size else 60.0))
    fig.colorbar(dots, ax=ax, fraction=0.025, label="depth (m)")
    ax.set_axis_off()
    ax.set_title("CAM_FRONT with the lidar points projected, coloured by depth")
    camera = directory / "camera_depth.png"
    fig.savefig(camera, bbox_inches="tight")
    plt.close(fig)
    return [bev, camera]
