"""k-NN label transfer through a sequence (the seed's A.1 video): how well do pretrained 3D features track classes?

The point features and labels of the first frame of a sequence form an annotated database. In each following
frame, every point gets, for each chosen class, the probability that it belongs to that class: the fraction of its
k nearest database features (Euclidean distance on the features, i.e. cosine distance for L2-normalised ones)
that carry the class, a binary k-NN classifier per class. One k-d tree query answers all classes at once.

Frames are rendered as a bird's-eye view and a camera overlay with red = car, blue = pedestrian and
green = vegetation, each mixed in by its probability over a grey base, written as PNG frames and an animated GIF;
per-frame precision and recall per class (a point is predicted positive when its probability exceeds 0.5) are
written as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

DEFAULT_CLASSES = ("vegetation", "car", "pedestrian")
# RGB in [0, 1]; classes not listed are drawn in the next free colour of _EXTRA_COLOURS.
CLASS_COLOURS = {"car": (1.0, 0.0, 0.0), "pedestrian": (0.0, 0.3, 1.0), "person": (0.0, 0.3, 1.0),
                 "vegetation": (0.0, 0.85, 0.0)}
_EXTRA_COLOURS = ((1.0, 0.8, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0))
BASE_GREY = 0.45


class FeatureDatabase:
    """Annotated features (the first frame) behind a k-d tree.

    Parameters
    ----------
    features : (D, C) float array
        Database features (one per voxel or point of the first frame).
    labels : (D,) int array
        Evaluation index of each database feature (0 = ignore; those entries are dropped).
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float32)
        labels = np.asarray(labels).reshape(-1)
        if features.ndim != 2 or features.shape[0] != labels.shape[0]:
            raise ValueError(f"features {features.shape} and labels {labels.shape} do not match")
        labelled = labels > 0
        if not labelled.any():
            raise ValueError("the database frame has no labelled point")
        self.labels = labels[labelled]
        self.tree = cKDTree(features[labelled])

    def class_probabilities(self, queries: np.ndarray, class_indices: Sequence[int], k: int = 20) -> np.ndarray:
        """Fraction of the k nearest database entries of each class, per query.

        Parameters
        ----------
        queries : (Q, C) float array
        class_indices : evaluation indices of the classes to score.
        k : number of neighbours (at most the database size).

        Returns
        -------
        (Q, len(class_indices)) float32 array in [0, 1]
        """
        k = min(k, self.labels.shape[0])
        _, neighbours = self.tree.query(np.asarray(queries, dtype=np.float32), k=k, workers=-1)
        neighbours = neighbours.reshape(len(queries), k)
        neighbour_labels = self.labels[neighbours]  # (Q, k)
        return np.stack([(neighbour_labels == c).mean(axis=1) for c in class_indices], axis=1).astype(np.float32)


def precision_recall(probabilities: np.ndarray, labels: np.ndarray, class_indices: Sequence[int],
                     threshold: float = 0.5) -> list[dict]:
    """Precision and recall of ``probability > threshold`` against the ground truth, per class.

    Parameters
    ----------
    probabilities : (N, K) float array, one column per class of ``class_indices``.
    labels : (N,) evaluation indices (0 = ignore: those points are not counted).

    Returns
    -------
    list of K dicts with ``precision``, ``recall`` (None when undefined), ``true_points``, ``predicted_points``.
    """
    labelled = labels > 0
    scores = []
    for column, class_index in enumerate(class_indices):
        predicted = (probabilities[labelled, column] > threshold)
        actual = labels[labelled] == class_index
        hits = int((predicted & actual).sum())
        scores.append({
            "precision": hits / int(predicted.sum()) if predicted.any() else None,
            "recall": hits / int(actual.sum()) if actual.any() else None,
            "true_points": int(actual.sum()),
            "predicted_points": int(predicted.sum()),
        })
    return scores


def class_colours(class_names: Sequence[str]) -> np.ndarray:
    """(K, 3) RGB colour of each class (red car, blue pedestrian, green vegetation, then others)."""
    extra = iter(_EXTRA_COLOURS)
    return np.array([CLASS_COLOURS.get(name) or next(extra, (1.0, 1.0, 1.0)) for name in class_names])


def mix_colours(probabilities: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Grey mixed with each class colour by its probability: (N, K) x (K, 3) -> (N, 3) RGB in [0, 1]."""
    weight = np.clip(probabilities.sum(axis=1, keepdims=True), 0.0, 1.0)
    total = np.maximum(probabilities.sum(axis=1, keepdims=True), 1e-9)
    coloured = (probabilities / total) @ colours
    return np.clip((1.0 - weight) * BASE_GREY + weight * coloured, 0.0, 1.0)


@dataclass
class KnnFrame:
    """One frame to render: points (N, 3) in the lidar frame, probabilities (N, K), optional camera overlay."""

    points: np.ndarray
    probabilities: np.ndarray
    image: np.ndarray | None = None  # (H, W, 3) uint8
    point_index: np.ndarray | None = None  # (M,) indices of the points that project into the image
    pixel_rc: np.ndarray | None = None  # (M, 2) row, column
    title: str = ""


def render_frame(frame: KnnFrame, class_names: Sequence[str], path: str | Path, bev_range: float = 40.0) -> Path:
    """Write one frame as a PNG: bird's-eye view on the left, camera overlay on the right (when given).

    Parameters
    ----------
    frame : the frame.
    class_names : names of the probability columns (for the colours and the legend).
    path : PNG destination.
    bev_range : half-width of the bird's-eye view in metres.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from slidr.utils.io import atomic_path

    colours = class_colours(class_names)
    point_colours = mix_colours(frame.probabilities, colours)
    with_camera = frame.image is not None and frame.point_index is not None
    figure, axes = plt.subplots(1, 2 if with_camera else 1, figsize=(13 if with_camera else 6.5, 6), dpi=90,
                                squeeze=False, gridspec_kw={"width_ratios": [1, 1.6] if with_camera else [1]})
    bev = axes[0, 0]
    bev.set_facecolor("black")
    # most certain points on top
    order = np.argsort(frame.probabilities.max(axis=1) if frame.probabilities.size else np.zeros(len(frame.points)))
    bev.scatter(frame.points[order, 0], frame.points[order, 1], c=point_colours[order], s=0.6, linewidths=0)
    bev.set_xlim(-bev_range, bev_range)
    bev.set_ylim(-bev_range, bev_range)
    bev.set_aspect("equal")
    bev.set_title("bird's-eye view")
    bev.set_xticks([])
    bev.set_yticks([])
    if with_camera:
        camera = axes[0, 1]
        camera.imshow(frame.image)
        order = np.argsort(frame.probabilities[frame.point_index].max(axis=1))
        camera.scatter(frame.pixel_rc[order, 1], frame.pixel_rc[order, 0], s=2.0, linewidths=0,
                       c=point_colours[frame.point_index][order])
        camera.set_xlim(0, frame.image.shape[1])
        camera.set_ylim(frame.image.shape[0], 0)
        camera.set_title("camera overlay")
        camera.axis("off")
    legend = [Patch(color=colour, label=name) for name, colour in zip(class_names, colours)]
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), frameon=False)
    figure.suptitle(frame.title)
    figure.tight_layout(rect=(0, 0.05, 1, 0.95))
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path


def write_gif(frames: Sequence[str | Path], path: str | Path, frame_ms: int = 500) -> Path:
    """Assemble PNG frames into an animated GIF (Pillow), looping forever."""
    from PIL import Image

    from slidr.utils.io import atomic_path

    images = [Image.open(frame).convert("RGB") for frame in frames]
    if not images:
        raise ValueError("no frame to write into a GIF")
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path
