"""Pictures of 3D detections: predicted and ground-truth boxes over the bird's-eye view and the camera image.

One PNG per frame, two panels: left, the bird's-eye view of the points the detector saw (x forward pointing up,
y to the left, as a driver sees the map) with the boxes' footprints and a stroke from the centre to the front
face; right, the camera image (image_2) with the 3D boxes projected (the 12 edges; the parts behind the camera
are cut at the camera plane). Ground truth of the detector's classes in green, other labelled objects (Van, Misc,
...) in grey, predictions in red with their score. The drawing functions take arrays; :func:`detection_pictures`
runs a trained detector on some frames of a split and writes the pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, cast

import numpy as np

from slidr.data.boxes import BOX_EDGES, box_corners
from slidr.utils.io import save_figure

GROUND_TRUTH_COLOUR = "#1a9850"
OTHER_COLOUR = "#9e9e9e"
PREDICTION_COLOUR = "#d73027"


def footprints(boxes: np.ndarray) -> np.ndarray:
    """Bottom-face corners of lidar boxes on the ground plane: (K, 7) -> (K, 4, 2) ``(x, y)``, front-left first."""
    return box_corners(boxes)[:, :4, :2]


def camera_edges(boxes: np.ndarray, lidar_to_camera: np.ndarray, projection: np.ndarray,
                 near: float = 0.1) -> list[np.ndarray]:
    """The image segments of the 12 edges of each lidar box, cut at the camera plane.

    Parameters
    ----------
    boxes : (K, 7) lidar boxes ``[x, y, z, l, w, h, yaw]``.
    lidar_to_camera : (4, 4) lidar -> rectified camera frame (z forward).
    projection : (3, 4) camera matrix (KITTI's ``P2``).
    near : depth of the cutting plane, metres.

    Returns
    -------
    one (E_k, 2, 2) array per box: E_k <= 12 segments ``[[u0, v0], [u1, v1]]`` (pixels), only the parts in front.
    """
    transform = np.asarray(lidar_to_camera, dtype=np.float64)
    projection = np.asarray(projection, dtype=np.float64)
    result = []
    for corners in box_corners(boxes):
        camera = corners @ transform[:3, :3].T + transform[:3, 3]
        homogeneous = camera @ projection[:, :3].T + projection[:, 3]
        segments = []
        for a, b in BOX_EDGES:
            pa, pb = homogeneous[a], homogeneous[b]
            if pa[2] < near and pb[2] < near:
                continue
            if pa[2] < near or pb[2] < near:  # cut the edge where it crosses the plane
                t = (near - pa[2]) / (pb[2] - pa[2])
                cut = pa + t * (pb - pa)
                pa, pb = (cut, pb) if pa[2] < near else (pa, cut)
            segments.append([pa[:2] / pa[2], pb[:2] / pb[2]])
        result.append(np.asarray(segments, dtype=np.float64).reshape(-1, 2, 2))
    return result


def draw_detection_frame(path: str | Path, points: np.ndarray, image: Optional[np.ndarray],
                         lidar_to_camera: np.ndarray, projection: np.ndarray, truth: np.ndarray,
                         truth_names: Sequence[str], predicted: np.ndarray, scores: np.ndarray,
                         predicted_names: Sequence[str], classes: Sequence[str],
                         point_range: Optional[Sequence[float]] = None, title: str = "") -> Path:
    """Write one frame's picture (module docstring) as a PNG.

    Parameters
    ----------
    path : the PNG to write.
    points : (N, 3+) lidar points (what the detector saw).
    image : (H, W, 3) uint8 camera image, or None (bird's-eye view only).
    lidar_to_camera, projection : (4, 4) lidar -> rectified camera, (3, 4) ``P2``.
    truth : (K, 7) ground-truth lidar boxes; truth_names (K,) their KITTI types.
    predicted : (D, 7) predicted lidar boxes; scores (D,); predicted_names (D,).
    classes : the detector's classes (ground truth of other types is drawn grey).
    point_range : ``[x_min, y_min, z_min, x_max, y_max, z_max]`` framing the bird's-eye view (default: the
        points' extent).
    title : figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = np.asarray(points, dtype=np.float64)
    points = points if points.ndim == 2 else points.reshape(-1, 3)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 7)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, 7)
    wanted = {name.lower() for name in classes}
    truth_colours = [GROUND_TRUTH_COLOUR if str(name).lower() in wanted else OTHER_COLOUR for name in truth_names]
    panels = 2 if image is not None else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.0 + (9.0 if image is not None else 0.0), 6.0), dpi=100,
                                squeeze=False, gridspec_kw={"width_ratios": [1.0, 1.8][:panels]})
    bev = axes[0, 0]
    # bird's-eye view: x forward up, y left to the left (plot coordinates (-y, x))
    if len(points):
        height = points[:, 2]
        bev.scatter(-points[:, 1], points[:, 0], s=0.3, c=height, cmap="viridis", vmin=np.percentile(height, 2),
                    vmax=np.percentile(height, 98), linewidths=0)
    for boxes, colours, labels in ((truth, truth_colours, [None] * len(truth)),
                                   (predicted, [PREDICTION_COLOUR] * len(predicted),
                                    [f"{name} {score:.2f}" for name, score in zip(predicted_names, scores)])):
        for corners, box, colour, label in zip(footprints(boxes), boxes, colours, labels):
            closed = np.vstack([corners, corners[:1]])
            bev.plot(-closed[:, 1], closed[:, 0], color=colour, lw=1.2)
            front = (corners[0] + corners[1]) / 2
            bev.plot([-box[1], -front[1]], [box[0], front[0]], color=colour, lw=1.0)
            if label:
                bev.text(-corners[:, 1].min(), corners[:, 0].max(), label, color=colour, fontsize=6)
    if point_range is not None:
        x_min, y_min, _, x_max, y_max, _ = point_range
        bev.set_xlim(-y_max, -y_min)
        bev.set_ylim(x_min, x_max)
    bev.set_aspect("equal")
    bev.set_xlabel("-y (m, left of the sensor to the left)")
    bev.set_ylabel("x (m, forward)")
    bev.set_title("bird's-eye view: truth green, prediction red")
    if image is not None:
        view = axes[0, 1]
        view.imshow(image)
        for boxes, colours in ((truth, truth_colours), (predicted, [PREDICTION_COLOUR] * len(predicted))):
            for segments, colour in zip(camera_edges(boxes, lidar_to_camera, projection), colours):
                for (u0, v0), (u1, v1) in segments:
                    view.plot([u0, u1], [v0, v1], color=colour, lw=1.0)
        view.set_xlim(0, image.shape[1] - 1)
        view.set_ylim(image.shape[0] - 1, 0)
        view.set_axis_off()
        view.set_title("camera (image_2)")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path)


def picture_items(num_frames: int, count: int) -> list[int]:
    """``count`` frame positions spread evenly over ``num_frames`` (all of them when there are fewer)."""
    if count <= 0 or num_frames <= 0:
        return []
    if count >= num_frames:
        return list(range(num_frames))
    return sorted({round(i * (num_frames - 1) / (count - 1)) if count > 1 else 0 for i in range(count)})


def detection_pictures(model_path: str | Path, cfg: Any, out: str | Path, split: Optional[str] = None,
                       count: Optional[int] = None, min_score: float = 0.3, device: str = "cpu") -> list[Path]:
    """Run the trained detector of ``model_path`` on ``count`` frames of ``split`` and draw them.

    Parameters
    ----------
    model_path : a ``slidr detect`` ``model.pt``.
    cfg : its :class:`~slidr.config.DetectionConfig` (data, head).
    out : folder of the pictures (``NNNNNN.png``, the frame id).
    split : default ``cfg.data.val_split``.
    count : frames drawn (default ``cfg.pictures``), spread over the split.
    min_score : predictions below this score are not drawn.
    device : where the detector runs.

    Returns
    -------
    the written paths.
    """
    from slidr.data.detection import DetectionDataset
    from slidr.data.io import open_image
    from slidr.methods.detect import load_detector, make_dataset, predict_frames

    count = cfg.pictures if count is None else count
    split = cfg.data.val_split if split is None else split
    loaded, collate = make_dataset(cfg, split, False)
    dataset = cast(DetectionDataset, loaded)
    items = picture_items(len(dataset), count)
    if not items:
        return []
    detector, _ = load_detector(model_path, cfg)
    written = []
    for item, (sample, detections) in zip(items, predict_frames(detector, dataset, collate, items, cfg, device)):
        entry = dataset.sample(item)
        camera = entry["cameras"]["image_2"]
        with open_image(dataset.index.resolve(camera["image"])) as opened:
            image = np.asarray(opened.convert("RGB"))
        keep = detections.scores >= min_score
        names = [cfg.head.classes[label] for label in detections.labels[keep]]
        frame = Path(str(sample["token"])).name
        written.append(draw_detection_frame(
            Path(out) / f"{frame}.png", sample["points"], image, sample["lidar_to_camera"], sample["projection"],
            sample["boxes"], sample["box_names"], detections.boxes[keep], detections.scores[keep], names,
            cfg.head.classes, cfg.head.point_range, title=f"{sample['token']}: {keep.sum()} predictions >= "
                                                          f"{min_score:g}, {len(sample['boxes'])} labelled objects"))
    return written
