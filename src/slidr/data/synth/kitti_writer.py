"""Write frames in the SemanticKITTI layout: one sequence per scene.

``sequences/NN/velodyne/FFFFFF.bin`` (float32 x 4: x forward, y left, z up in the lidar's frame, remission in
[0, 1]), ``labels/FFFFFF.label`` (uint32: SemanticKITTI raw id in the lower 16 bits, instance id in the upper
16), ``image_2/FFFFFF.png`` (the front camera), ``calib.txt`` (``P0``-``P3`` and ``Tr`` = velodyne -> camera 0,
which is the image_2 camera here), ``poses.txt`` (camera 0 pose of each frame in the first frame's camera 0
frame, 3x4 row-major) and ``times.txt``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from slidr.data.synth.sensors import LIDAR_TRANSLATION, Sensor


def sequence_dir(root: Path, scene: int) -> Path:
    return root / "sequences" / f"{scene:02d}"


def velodyne_to_ego() -> np.ndarray:
    """The KITTI-style lidar frame: the ego axes (x forward, y left, z up) at the lidar's position."""
    out = np.eye(4)
    out[:3, 3] = LIDAR_TRANSLATION
    return out


def write_frame(root: Path, scene: int, frame: int, points: np.ndarray, labels: np.ndarray,
                image: np.ndarray) -> None:
    """Write one frame.

    Parameters
    ----------
    root : dataset root.
    scene, frame : sequence number and frame number.
    points : (N, 4) x, y, z (KITTI lidar frame), remission in [0, 1].
    labels : (N,) uint32 ``semantic | instance << 16``.
    image : (H, W, 3) uint8 front-camera image.
    """
    directory = sequence_dir(root, scene)
    stem = f"{frame:06d}"
    for sub in ("velodyne", "labels", "image_2"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(points, dtype=np.float32).tofile(directory / "velodyne" / f"{stem}.bin")
    np.ascontiguousarray(labels, dtype=np.uint32).tofile(directory / "labels" / f"{stem}.label")
    Image.fromarray(image).save(directory / "image_2" / f"{stem}.png", compress_level=1)


def write_sequence_files(root: Path, scene: int, camera: Sensor, ego_to_global: list[np.ndarray],
                         timestamps: list[int]) -> None:
    """``calib.txt``, ``poses.txt`` and ``times.txt`` of one sequence.

    Parameters
    ----------
    root : dataset root.
    scene : sequence number.
    camera : the image_2 camera (its intrinsic gives P0-P3; it is camera 0).
    ego_to_global : (4, 4) ego pose of every frame, in order.
    timestamps : microseconds of every frame.
    """
    directory = sequence_dir(root, scene)
    directory.mkdir(parents=True, exist_ok=True)
    projection = np.hstack([camera.camera_matrix, np.zeros((3, 1))])
    velo_to_cam = np.linalg.inv(camera.to_ego) @ velodyne_to_ego()
    lines = [f"P{k}: " + _row(projection) for k in range(4)] + ["Tr: " + _row(velo_to_cam[:3])]
    (directory / "calib.txt").write_text("\n".join(lines) + "\n")
    cam_to_global = [pose @ camera.to_ego for pose in ego_to_global]
    first_inv = np.linalg.inv(cam_to_global[0])
    (directory / "poses.txt").write_text("".join(_row((first_inv @ pose)[:3]) + "\n" for pose in cam_to_global))
    (directory / "times.txt").write_text("".join(f"{(t - timestamps[0]) / 1e6:.6e}\n" for t in timestamps))


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """Parse a ``calib.txt`` into 3x4 matrices by key."""
    out = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, values = line.split(":", 1)
            out[key.strip()] = np.array([float(v) for v in values.split()]).reshape(3, 4)
    return out


def _row(matrix: np.ndarray) -> str:
    return " ".join(f"{value:.12e}" for value in np.asarray(matrix).ravel())
