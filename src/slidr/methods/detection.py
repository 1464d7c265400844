"""CenterPoint's targets, loss and decoding for the BEV detector (:mod:`slidr.models.detection`), as pure functions.

Boxes are lidar-frame ``(K, 7)`` ``[x, y, z, dx, dy, dz, yaw]``: the box's centre, its length (along its
heading), width and height, and the heading's angle from the lidar's x axis towards its y axis (OpenPCDet's
layout, the one of :func:`slidr.methods.detection_eval.lidar_to_camera_boxes`). Labels are class indices into
the detector's class list; negative labels are not detection targets (``Van``, ``DontCare``, ...).

Targets (CenterPoint, Yin et al., CVPR 2021, after CenterNet, Zhou et al. 2019), one map cell per object:

- heatmap ``(B, C, rows, cols)``: for each object, a Gaussian around the cell of its centre in its class's
  channel (peak exactly 1 at that cell, standard deviation ``(2 r + 1) / 6`` for CenterNet's radius ``r`` of
  the box's footprint in cells, at least ``min_radius``), the element-wise maximum where Gaussians overlap;
- at the centre cell, the regression :data:`REGRESSION_CODE`: the centre's offset inside the cell in cells
  (``[0, 1)``), ``z``, the logarithms of the three sizes, ``sin`` and ``cos`` of the yaw.

A cell holds one object: the regression maps are shared by the classes, so when the centres of several objects
fall in the same cell of a scan, the one with the largest footprint is the target and the others are left out
(``DetectionTargets.num_shared_cell`` counts them; with 0.4 m cells this takes two objects within 0.57 m of each
other). Objects whose centre lies outside the grid's x/y range are left out too (``num_outside``).

Loss (:func:`detection_loss`): CenterNet's focal loss on the heatmap (normalised by the number of objects) plus
L1 on the regression at the objects' centre cells (weighted per channel by ``code_weights``, normalised by the
number of objects), as ``heatmap_weight * focal + regression_weight * l1``.

Decoding (:func:`decode_detections`): sigmoid of the heatmap, local maxima of a 3x3 neighbourhood, the ``top_k``
best over all classes and cells, a score threshold, boxes from the regression at those cells, then greedy
rotated-BEV non-maximum suppression (:func:`rotated_nms`) and the ``max_detections`` best. Predictions become
KITTI ``label_2`` objects (camera frame, 2D boxes, alpha) with :func:`to_kitti_objects`, ready for
:func:`slidr.methods.detection_eval.kitti_ap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from slidr.data.boxes import kitti_camera_corners
from slidr.data.boxes import project_boxes_to_image as project_corners
from slidr.data.detection import class_indices  # noqa: F401 - re-exported: a public name of this module
from slidr.errors import SlidrError
from slidr.methods.detection_eval import KittiObjects, lidar_bev_overlap, lidar_to_camera_boxes
from slidr.methods.losses import Stats
from slidr.models.detection import BevGrid

REGRESSION_CODE = ("offset_x", "offset_y", "z", "log_length", "log_width", "log_height", "sin_yaw", "cos_yaw")
FOCAL_ALPHA = 2.0  # CenterNet's focal loss exponents
FOCAL_BETA = 4.0
SIGMOID_CLAMP = 1e-4  # CenterNet clamps the heatmap's probabilities to [1e-4, 1 - 1e-4]


# --------------------------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------------------------
def gaussian_radius(length: np.ndarray | float, width: np.ndarray | float, min_overlap: float) -> np.ndarray:
    """CenterNet's Gaussian radius of boxes of a footprint ``length`` x ``width`` (in cells).

    The smallest of the three radii of CornerNet's rule (two corners both shifted inside, both outside, one of
    each, such that the shifted box keeps an IoU of ``min_overlap`` with the original), computed exactly as
    CenterNet's and CenterPoint's code computes them: each root of ``a r^2 - b r + c = 0`` taken as
    ``(b + sqrt(b^2 - 4 a c)) / 2`` (without dividing by ``a``, which makes the first and third candidates
    larger than the quadratic's root). Keeping their formula keeps their heatmaps.

    ``length``, ``width``: (K,) or scalars -> (K,) float64 radii (before the caller's ``floor`` and minimum).
    """
    height = np.asarray(length, dtype=np.float64)
    width = np.asarray(width, dtype=np.float64)
    o = float(min_overlap)
    b1 = height + width
    c1 = width * height * (1 - o) / (1 + o)
    r1 = (b1 + np.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - o) * width * height
    r2 = (b2 + np.sqrt(b2**2 - 4 * 4 * c2)) / 2
    a3 = 4 * o
    b3 = -2 * o * (height + width)
    c3 = (o - 1) * width * height
    r3 = (b3 + np.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return np.minimum(np.minimum(r1, r2), r3)


def gaussian_kernel(radius: int, dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> torch.Tensor:
    """(2r + 1, 2r + 1) Gaussian ``exp(-(dx^2 + dy^2) / (2 sigma^2))``, ``sigma = (2r + 1) / 6``, peak 1.

    Values below ``eps * max`` of float32 are set to 0, as CenterNet does.
    """
    sigma = (2 * radius + 1) / 6
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma * sigma))
    kernel[kernel < torch.finfo(torch.float32).eps * kernel.max()] = 0
    return kernel.to(dtype=dtype, device=device)


def draw_gaussian(heatmap: torch.Tensor, row: int, col: int, radius: int) -> None:
    """Raise ``heatmap`` (H, W) in place to a Gaussian of ``radius`` centred on cell (row, col), clipped to the map."""
    rows, cols = heatmap.shape
    kernel = gaussian_kernel(radius, heatmap.dtype, heatmap.device)
    top, bottom = min(row, radius), min(rows - row, radius + 1)
    left, right = min(col, radius), min(cols - col, radius + 1)
    window = heatmap[row - top:row + bottom, col - left:col + right]
    torch.maximum(window, kernel[radius - top:radius + bottom, radius - left:radius + right], out=window)


def encode_boxes(boxes: torch.Tensor, grid: BevGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre cells and regression targets of boxes.

    ``boxes`` (K, 7) lidar ``[x, y, z, dx, dy, dz, yaw]`` -> (row (K,) int64, col (K,) int64, inside (K,) bool,
    regression (K, 8) in the layout :data:`REGRESSION_CODE`). Rows and columns are meaningless where ``inside`` is
    false (centre outside the grid's x/y range). :func:`decode_boxes` inverts it.
    """
    row, col, inside = grid.cell_of(boxes)
    offset_x = (boxes[:, 0] - grid.x_min) / grid.cell - col
    offset_y = (boxes[:, 1] - grid.y_min) / grid.cell - row
    regression = torch.stack([offset_x, offset_y, boxes[:, 2], torch.log(boxes[:, 3]), torch.log(boxes[:, 4]),
                              torch.log(boxes[:, 5]), torch.sin(boxes[:, 6]), torch.cos(boxes[:, 6])], dim=1)
    return row, col, inside, regression


def decode_boxes(row: torch.Tensor, col: torch.Tensor, regression: torch.Tensor, grid: BevGrid) -> torch.Tensor:
    """Boxes (K, 7) lidar ``[x, y, z, dx, dy, dz, yaw]`` from cells (K,), (K,) and their regression (K, 8).

    The inverse of :func:`encode_boxes` (yaw comes back wrapped to (-pi, pi]).
    """
    x = (col.to(regression.dtype) + regression[:, 0]) * grid.cell + grid.x_min
    y = (row.to(regression.dtype) + regression[:, 1]) * grid.cell + grid.y_min
    yaw = torch.atan2(regression[:, 6], regression[:, 7])
    return torch.stack([x, y, regression[:, 2], *torch.exp(regression[:, 3:6]).unbind(1), yaw], dim=1)


@dataclass
class DetectionTargets:
    """CenterPoint targets of a batch (:func:`encode_targets`); M objects over the whole batch.

    Attributes
    ----------
    heatmap : (B, C, rows, cols) float in [0, 1]; 1 exactly at the objects' centre cells.
    batch : (M,) int64 scan of each object.
    cell : (M,) int64 flat index ``row * cols + col`` of its centre cell.
    labels : (M,) int64 class index.
    regression : (M, 8) float regression targets (:data:`REGRESSION_CODE`).
    boxes : (M, 7) float the encoded boxes.
    num_outside : objects left out because their centre is outside the grid's x/y range.
    num_shared_cell : objects left out because a larger object's centre is in the same cell.
    """

    heatmap: torch.Tensor
    batch: torch.Tensor
    cell: torch.Tensor
    labels: torch.Tensor
    regression: torch.Tensor
    boxes: torch.Tensor
    num_outside: int
    num_shared_cell: int

    @property
    def num_objects(self) -> int:
        return int(self.batch.shape[0])

    def to(self, device: torch.device | str) -> "DetectionTargets":
        return DetectionTargets(self.heatmap.to(device), self.batch.to(device), self.cell.to(device),
                                self.labels.to(device), self.regression.to(device), self.boxes.to(device),
                                self.num_outside, self.num_shared_cell)


def encode_targets(boxes: Sequence[torch.Tensor | np.ndarray], labels: Sequence[torch.Tensor | np.ndarray],
                   grid: BevGrid, num_classes: int, gaussian_overlap: float = 0.1, min_radius: int = 2,
                   device: Optional[torch.device | str] = None) -> DetectionTargets:
    """CenterPoint targets of a batch of scans (module docstring).

    Parameters
    ----------
    boxes : one (K_b, 7) array per scan, lidar ``[x, y, z, dx, dy, dz, yaw]``; sizes must be > 0.
    labels : one (K_b,) int array per scan: class index in ``0 .. num_classes - 1``, negative = not a target.
    grid : the BEV grid of the detector.
    num_classes : C.
    gaussian_overlap, min_radius : CenterNet's radius rule (:func:`gaussian_radius`) and its lower bound in cells.
    device : where the targets go (default: the device of the first tensor of ``boxes``, else the CPU).

    Returns
    -------
    :class:`DetectionTargets`
    """
    if len(boxes) != len(labels):
        raise SlidrError(f"encode_targets: {len(boxes)} box arrays but {len(labels)} label arrays")
    if device is None:
        device = next((b.device for b in boxes if isinstance(b, torch.Tensor)), torch.device("cpu"))
    heatmap = torch.zeros(len(boxes), num_classes, grid.rows, grid.cols)
    kept_batch, kept_cell, kept_labels, kept_regression, kept_boxes = [], [], [], [], []
    num_outside = num_shared = 0
    for b, (scan_boxes, scan_labels) in enumerate(zip(boxes, labels)):
        scan_boxes = torch.as_tensor(scan_boxes).detach().to("cpu", torch.float64).reshape(-1, 7)
        scan_labels = torch.as_tensor(scan_labels).detach().to("cpu", torch.int64).reshape(-1)
        if scan_labels.shape[0] != scan_boxes.shape[0]:
            raise SlidrError(f"encode_targets: scan {b} has {scan_boxes.shape[0]} boxes but {scan_labels.shape[0]} "
                             f"labels")
        if torch.any(scan_labels >= num_classes):
            raise SlidrError(f"encode_targets: scan {b} has label {int(scan_labels.max())}, but there are only "
                             f"{num_classes} classes")
        targets = scan_labels >= 0
        scan_boxes, scan_labels = scan_boxes[targets], scan_labels[targets]
        if not torch.all(torch.isfinite(scan_boxes)) or torch.any(scan_boxes[:, 3:6] <= 0):
            raise SlidrError(f"encode_targets: scan {b} has a box with a non-finite value or a size <= 0")
        row, col, inside, regression = encode_boxes(scan_boxes, grid)
        num_outside += int((~inside).sum())
        # larger footprints first: they win a shared centre cell (stable: ties keep the input order)
        order = torch.argsort(-(scan_boxes[:, 3] * scan_boxes[:, 4]), stable=True)
        radii = np.maximum(np.floor(gaussian_radius(scan_boxes[:, 3].numpy() / grid.cell,
                                                    scan_boxes[:, 4].numpy() / grid.cell, gaussian_overlap)),
                           min_radius).astype(np.int64)
        taken: set[int] = set()
        for k in order.tolist():
            if not inside[k]:
                continue
            cell = int(row[k]) * grid.cols + int(col[k])
            if cell in taken:
                num_shared += 1
                continue
            taken.add(cell)
            draw_gaussian(heatmap[b, int(scan_labels[k])], int(row[k]), int(col[k]), int(radii[k]))
            kept_batch.append(b)
            kept_cell.append(cell)
            kept_labels.append(int(scan_labels[k]))
            kept_regression.append(regression[k])
            kept_boxes.append(scan_boxes[k])
    count = len(kept_batch)
    return DetectionTargets(
        heatmap=heatmap.to(device),
        batch=torch.tensor(kept_batch, dtype=torch.int64, device=device),
        cell=torch.tensor(kept_cell, dtype=torch.int64, device=device),
        labels=torch.tensor(kept_labels, dtype=torch.int64, device=device),
        regression=(torch.stack(kept_regression) if count else torch.zeros(0, 8, dtype=torch.float64)).to(
            device, torch.float32),
        boxes=(torch.stack(kept_boxes) if count else torch.zeros(0, 7, dtype=torch.float64)).to(
            device, torch.float32),
        num_outside=num_outside, num_shared_cell=num_shared)


# --------------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------------
def centernet_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = FOCAL_ALPHA,
                         beta: float = FOCAL_BETA) -> tuple[torch.Tensor, int]:
    """CenterNet's penalty-reduced focal loss of a heatmap.

    With ``p = clamp(sigmoid(logits), 1e-4, 1 - 1e-4)``: at cells where ``target == 1``, ``-(1 - p)^alpha
    log(p)``; elsewhere ``-(1 - target)^beta p^alpha log(1 - p)``; summed and divided by the number of cells
    with ``target == 1`` (at least 1).

    ``logits``, ``target``: (B, C, H, W) -> (scalar loss, number of positive cells).
    """
    if logits.shape != target.shape:
        raise SlidrError(f"focal loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    probability = torch.sigmoid(logits.float()).clamp(SIGMOID_CLAMP, 1 - SIGMOID_CLAMP)
    target = target.float()
    positive = target == 1
    positive_loss = -torch.log(probability) * (1 - probability) ** alpha
    negative_loss = -torch.log(1 - probability) * probability**alpha * (1 - target) ** beta
    num_positive = int(positive.sum())
    loss = torch.where(positive, positive_loss, negative_loss).sum() / max(num_positive, 1)
    return loss, num_positive


def gather_cells(maps: torch.Tensor, batch: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Values of maps (B, K, H, W) at cells: scan (M,), flat cell ``row * W + col`` (M,) -> (M, K)."""
    channels, height, width = maps.shape[1:]
    return maps.permute(0, 2, 3, 1).reshape(-1, channels)[batch * (height * width) + cell]


def regression_loss(regression: torch.Tensor, targets: DetectionTargets,
                    code_weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """L1 between the predicted regression (B, 8, H, W) at the objects' centre cells and their targets.

    ``sum_m sum_j code_weights[j] |pred[m, j] - target[m, j]| / max(M, 1)``; an exact 0 (still connected to
    ``regression``'s graph) when the batch has no object.
    """
    weights = torch.as_tensor(code_weights, dtype=torch.float32, device=regression.device)
    if targets.num_objects == 0:
        return regression.sum() * 0.0
    predicted = gather_cells(regression, targets.batch, targets.cell).float()
    return (torch.abs(predicted - targets.regression) * weights).sum() / targets.num_objects


def detection_loss(outputs: dict[str, torch.Tensor], targets: DetectionTargets, heatmap_weight: float = 1.0,
                   regression_weight: float = 2.0, code_weights: Sequence[float] = (1.0,) * 8
                   ) -> tuple[torch.Tensor, Stats]:
    """CenterPoint's loss: ``heatmap_weight * focal + regression_weight * L1`` (module docstring).

    Parameters
    ----------
    outputs : the detector's maps, ``heatmap`` (B, C, H, W) logits and ``regression`` (B, 8, H, W).
    targets : :func:`encode_targets` of the batch's boxes (on the outputs' device).
    heatmap_weight, regression_weight, code_weights : CenterPoint's loss weights (OpenPCDet's KITTI
        CenterPoint: 1, 2 and eight ones).

    Returns
    -------
    (scalar loss, stats): ``heatmap_loss``, ``regression_loss`` (unweighted), ``objects``, ``empty`` (no object in
    the batch: the loss is the heatmap's negative part only, still a valid training signal).
    """
    focal, _ = centernet_focal_loss(outputs["heatmap"], targets.heatmap)
    l1 = regression_loss(outputs["regression"], targets, code_weights)
    loss = heatmap_weight * focal + regression_weight * l1
    stats: Stats = {"heatmap_loss": float(focal.detach()), "regression_loss": float(l1.detach()),
                    "objects": targets.num_objects, "empty": targets.num_objects == 0}
    return loss, stats


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------
class Detections(NamedTuple):
    """Detected boxes of one scan: ``boxes`` (D, 7) float64 lidar ``[x, y, z, dx, dy, dz, yaw]``, ``scores`` (D,)
    float64 in (0, 1), ``labels`` (D,) int64 class indices; sorted by decreasing score."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def heatmap_peaks(heatmap: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``top_k`` best local maxima of each scan's heatmap.

    ``heatmap`` (B, C, H, W) logits -> scores (B, k) probabilities (decreasing), classes (B, k) int64, cells (B, k)
    int64 flat ``row * W + col``; ``k = min(top_k, C * H * W)``. A cell is a local maximum when its probability
    equals the maximum of its 3x3 neighbourhood in its class's channel (ties are all kept); the others score 0.
    """
    batch, classes, height, width = heatmap.shape
    probability = torch.sigmoid(heatmap.float())
    peaks = probability == F.max_pool2d(probability, 3, stride=1, padding=1)
    scores, index = torch.topk((probability * peaks).reshape(batch, -1), min(top_k, classes * height * width))
    return scores, torch.div(index, height * width, rounding_mode="floor"), index % (height * width)


def rotated_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
                labels: Optional[np.ndarray] = None) -> np.ndarray:
    """Greedy non-maximum suppression by rotated bird's-eye-view IoU.

    Parameters
    ----------
    boxes : (D, 7) lidar ``[x, y, z, dx, dy, dz, yaw]``.
    scores : (D,)
    iou_threshold : a box is suppressed when its BEV IoU with a kept, better-scored box exceeds this.
    labels : (D,) ints, optional: suppress only within a class (per-class NMS); None: over all boxes.

    Returns
    -------
    (D',) int64 indices of the kept boxes, by decreasing score (ties: the earlier box first).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    overlaps = lidar_bev_overlap(boxes[order], boxes[order])
    if labels is not None:
        ordered_labels = np.asarray(labels).reshape(-1)[order]
        overlaps = np.where(ordered_labels[:, None] == ordered_labels[None, :], overlaps, 0.0)
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= overlaps[i] > iou_threshold
    return order[np.asarray(kept, dtype=np.int64)]


def decode_detections(heatmap: torch.Tensor, regression: torch.Tensor, grid: BevGrid, top_k: int = 500,
                      score_threshold: float = 0.1, nms_iou: Optional[float] = 0.01, nms_per_class: bool = False,
                      max_detections: int = 100) -> list[Detections]:
    """Boxes of a batch from the detector's maps (module docstring).

    Parameters
    ----------
    heatmap : (B, C, H, W) logits.
    regression : (B, 8, H, W) (:data:`REGRESSION_CODE`).
    grid : the detector's BEV grid.
    top_k, score_threshold : peaks kept per scan, then those scoring at least the threshold.
    nms_iou : rotated-BEV NMS threshold (:func:`rotated_nms`); None: no NMS.
    nms_per_class : NMS within each class rather than over all.
    max_detections : boxes kept per scan at the end.

    Returns
    -------
    one :class:`Detections` per scan (numpy, on the CPU).
    """
    scores, classes, cells = heatmap_peaks(heatmap.detach(), top_k)
    results = []
    for b in range(heatmap.shape[0]):
        keep = scores[b] >= score_threshold
        scan_cells = cells[b][keep]
        values = gather_cells(regression.detach()[b:b + 1].float(), torch.zeros_like(scan_cells), scan_cells)
        boxes = decode_boxes(torch.div(scan_cells, grid.cols, rounding_mode="floor"), scan_cells % grid.cols,
                             values, grid)
        result = Detections(boxes.double().cpu().numpy(), scores[b][keep].double().cpu().numpy(),
                            classes[b][keep].cpu().numpy().astype(np.int64))
        if nms_iou is not None and len(result.scores):
            kept = rotated_nms(result.boxes, result.scores, nms_iou, result.labels if nms_per_class else None)
            result = Detections(result.boxes[kept], result.scores[kept], result.labels[kept])
        results.append(Detections(*(array[:max_detections] for array in result)))
    return results


def to_kitti_objects(detections: Detections, classes: Sequence[str], lidar_to_camera: np.ndarray,
                     projection: np.ndarray, image_size: tuple[int, int], drop_outside_image: bool = True,
                     source: str = "<detections>") -> KittiObjects:
    """Detections of one scan as KITTI result objects (``label_2`` fields plus scores) for ``kitti_ap``.

    Parameters
    ----------
    detections : boxes in the lidar frame, scores, class indices into ``classes``.
    classes : class names (``Car``, ``Pedestrian``, ``Cyclist``).
    lidar_to_camera : (4, 4) lidar -> rectified camera (KITTI: ``R0_rect @ Tr_velo_to_cam``).
    projection : (3, 4) camera matrix of the evaluated image (KITTI: ``P2``).
    image_size : (width, height) of that image.
    drop_outside_image : drop detections whose centre is behind the camera or of which nothing is in front of the
        camera inside the image (KITTI labels only objects seen in ``image_2``: such boxes could only be false
        positives).

    Returns
    -------
    :class:`KittiObjects` with camera boxes (:func:`lidar_to_camera_boxes`), 2D boxes (the extent of the part of
    the box in front of the camera, clipped to the image: :func:`slidr.data.boxes.project_boxes_to_image`),
    ``alpha`` from the box's position and yaw, and the scores.
    """
    labels = np.asarray(detections.labels, dtype=np.int64).reshape(-1)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise SlidrError(f"{source}: class index {int(labels.max())} outside the {len(classes)} classes")
    camera = lidar_to_camera_boxes(detections.boxes, lidar_to_camera)
    width, height = image_size
    corners = kitti_camera_corners(camera[:, :3], camera[:, [4, 5, 3]], camera[:, 6])
    image = project_corners(corners, np.asarray(projection, dtype=np.float64), (height, width))
    bbox = image.clipped
    scores = np.asarray(detections.scores, dtype=np.float64).reshape(-1)
    if drop_outside_image:
        keep = (camera[:, 2] > 0) & image.valid  # centre in front, some of the box in the image
        camera, bbox, scores, labels = camera[keep], bbox[keep], scores[keep], labels[keep]
    names = np.asarray(classes, dtype=str)[labels] if len(labels) else np.zeros(0, dtype=str)
    return KittiObjects.create(names, bbox, dimensions=camera[:, [4, 5, 3]], location=camera[:, :3],
                               rotation_y=camera[:, 6], score=scores, source=source)
