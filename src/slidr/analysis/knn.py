"""k-NN label transfer through a sequence (the seed's A.1 video): how well do pretrained 3D features track classes?

The point features and labels of the first frame of a sequence form an annotated database. In each following
frame, every point gets, for each chosen class, the probability that it belongs to that class: the fraction of its
k nearest database features (Euclidean distance on the features, i.e. cosine distance for L2-normalised ones)
that carry the class, a binary k-NN classifier per class. One k-d tree query answers all classes at once.

Which features: those the pretraining trained. For SLidR, PPKT, ST-SLidR and PointContrast, the 3D network's output
(its last layer ``final`` is in their loss; L2-normalised when ``backbone.normalize_output``). ScaLR and
DepthContrast train ``forward_features`` through a head of their own and leave ``final`` at its initialisation
(their module's ``trains_output`` is False): their k-NN compares ``forward_features``, the features the downstream
tasks read, L2-normalised so that the distance is the cosine one here too. ``knn.json`` says which (``features``).

Frames are rendered as a bird's-eye view and a camera overlay with red = car, blue = pedestrian and
green = vegetation, each mixed in by its probability over a grey base, written as PNG frames and an animated GIF;
per-frame precision and recall per class (a point is predicted positive when its probability exceeds 0.5) are
written as JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, cast

import numpy as np
import torch
from scipy.spatial import cKDTree

from slidr.analysis.similarity import denormalize_image
from slidr.config import KNN_CLASSES, with_changes
from slidr.utils.io import save_figure

DEFAULT_CLASSES = KNN_CLASSES
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
        # image, point_index and pixel_rc are given together
        image, point_index = cast(np.ndarray, frame.image), cast(np.ndarray, frame.point_index)
        pixel_rc = cast(np.ndarray, frame.pixel_rc)
        camera = axes[0, 1]
        camera.imshow(image)
        order = np.argsort(frame.probabilities[point_index].max(axis=1))
        camera.scatter(pixel_rc[order, 1], pixel_rc[order, 0], s=2.0, linewidths=0,
                       c=point_colours[point_index][order])
        camera.set_xlim(0, image.shape[1])
        camera.set_ylim(image.shape[0], 0)
        camera.set_title("camera overlay")
        camera.axis("off")
    legend = [Patch(color=colour, label=name) for name, colour in zip(class_names, colours)]
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), frameon=False)
    figure.suptitle(frame.title)
    figure.tight_layout(rect=(0, 0.05, 1, 0.95))
    return save_figure(figure, path)


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


# --------------------------------------------------------------------------------------------------------------
# A whole sequence: from a pretrained file to frames, GIF and scores
# --------------------------------------------------------------------------------------------------------------


def knn_sequence(pretrained: str | Path, out: str | Path, *, index: Optional[str] = None,
                 scene: Optional[str] = None, classes: Sequence[str] = DEFAULT_CLASSES, k: int = 20,
                 camera: Optional[str] = "CAM_FRONT", max_frames: Optional[int] = None,
                 frame_ms: int = 500) -> dict:
    """Label transfer from the first frame of a scene to the following ones; writes frames, GIF and JSON.

    Parameters
    ----------
    pretrained : exported pretraining file (its config gives the network and the voxels).
    out : output folder (``frame_NNN.png``, ``knn.gif``, ``knn.json``).
    index : dataset index (default: the pretraining's ``data.index``).
    scene : scene (nuScenes) or sequence (SemanticKITTI) name; default: the first scene of the ``val`` split
        when there is one, else of the index.
    classes : evaluation class names to transfer.
    k : neighbours per query.
    camera : channel of the camera overlay (None: bird's-eye view only; also when the index has no images).
    max_frames : stop after this many frames (database frame included).
    frame_ms : GIF frame duration.

    Returns
    -------
    dict
        What ``knn.json`` holds: ``scene``, ``database_token``, ``classes``, ``k``, ``features`` (``output`` or
        ``forward_features``, see the module docstring), ``frames`` (token, per-class
        precision/recall), ``mean_precision``, ``mean_recall`` (per class over frames), ``gif``, ``seconds``.
    """
    from slidr.data.classes import class_names
    from slidr.data.datasets import DownstreamDataset, PretrainDataset
    from slidr.data.index import index_dataset, load_index
    from slidr.engine.checkpoint import load_backbone, load_pretraining_export
    from slidr.errors import SlidrError
    from slidr.methods import METHODS
    from slidr.models.unet import build_backbone
    from slidr.utils.io import write_json
    from slidr.utils.progress import progress

    start = time.perf_counter()
    _, cfg = load_pretraining_export(pretrained, "knn")
    from_output = getattr(METHODS.get(cfg.method, where=f"{pretrained}: method"), "trains_output", True)
    model = build_backbone(cfg.backbone)
    load_backbone(pretrained, model, None)
    model.eval()

    data_cfg = with_changes(cfg.data, {"index": index or cfg.data.index, "augment.enabled": False,
                                       "superpixels.method": "none"})
    dataset_index = load_index(data_cfg.index)
    data_cfg = with_changes(data_cfg, {"dataset": index_dataset(dataset_index, "slidr knn")})
    names = class_names(data_cfg.dataset)
    unknown = [name for name in classes if name not in names]
    if unknown:
        raise SlidrError(f"unknown classes {unknown}; classes of {data_cfg.dataset}: {', '.join(names)}")
    class_indices = [names.index(name) + 1 for name in classes]
    if scene is None:
        pool = dataset_index.splits.get("val") or list(dataset_index.scenes)
        if not pool:
            raise SlidrError(f"{data_cfg.index} has no scene")
        scene = pool[0]
    if scene not in dataset_index.scenes:
        raise SlidrError(f"scene {scene!r} is not in {data_cfg.index}")
    has_camera = camera is not None and camera in (dataset_index.samples[0].get("cameras") or {})
    dataset: PretrainDataset | DownstreamDataset
    if has_camera:
        data_cfg = with_changes(data_cfg, {"cameras": [camera]})
        dataset = PretrainDataset(dataset_index, None, data_cfg, train=False)
    else:
        dataset = DownstreamDataset(dataset_index, None, data_cfg, train=False)
    scenes = dataset_index.samples.column("scene")
    items = [item for item, position in enumerate(dataset.positions) if scenes[int(position)] == scene]
    if max_frames is not None:
        items = items[:max_frames]
    if len(items) < 2:
        raise SlidrError(f"scene {scene!r} has {len(items)} frame(s); k-NN transfer needs at least 2")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    database = None
    database_token = None
    frames, pngs = [], []
    for number, item in enumerate(progress(items, desc=f"k-NN {scene}", unit="frame")):
        scan = dataset[item]
        if scan.get("labels") is None:
            raise SlidrError(f"sample {scan['token']} has no labels; k-NN transfer needs a labelled sequence")
        with torch.no_grad():
            voxel_features = _features(model, scan, from_output)
        voxel_labels = scan["labels"][_kept_points(scan)] if "voxel_labels" not in scan else scan["voxel_labels"]
        if database is None:
            database = FeatureDatabase(voxel_features, voxel_labels)
            database_token = scan["token"]
            continue
        point_probabilities = database.class_probabilities(voxel_features, class_indices, k)[scan["inverse_map"]]
        scores = precision_recall(point_probabilities, scan["labels"], class_indices)
        frames.append({"token": scan["token"], "scores": dict(zip(classes, scores))})
        frame = KnnFrame(scan["points"][:, :3], point_probabilities, title=f"{scene} frame {number}")
        if has_camera:
            frame.image = denormalize_image(scan["images"][0])
            frame.point_index = scan["pairing_points"]
            frame.pixel_rc = scan["pairing_images"][:, 1:]
        pngs.append(render_frame(frame, classes, out / f"frame_{number:03d}.png"))
    gif = write_gif(pngs, out / "knn.gif", frame_ms)
    result = {
        "scene": scene, "database_token": database_token, "classes": list(classes), "k": k,
        "features": "output" if from_output else "forward_features", "frames": frames,
        "mean_precision": {c: _mean(f["scores"][c]["precision"] for f in frames) for c in classes},
        "mean_recall": {c: _mean(f["scores"][c]["recall"] for f in frames) for c in classes},
        "gif": str(gif), "frame_pngs": [str(p) for p in pngs],
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(out / "knn.json", result)
    return result


def _features(model: Any, scan: dict, from_output: bool = True) -> np.ndarray:  # a BACKBONES network
    """(V, C) features of the scan's voxels: the network's output, or (``from_output`` False) its
    ``forward_features`` L2-normalised."""
    from slidr.models.sparse import SparseTensor

    coords = torch.from_numpy(scan["voxel_coords"])
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=coords.dtype), coords], dim=1)
    voxels = SparseTensor(coords, torch.from_numpy(scan["voxel_feats"]))
    if from_output:
        return model(voxels).numpy()
    return torch.nn.functional.normalize(model.forward_features(voxels), dim=1).numpy()


def _kept_points(scan: dict) -> np.ndarray:
    """One point per voxel (the first point of each voxel in the inverse map)."""
    order = np.argsort(scan["inverse_map"], kind="stable")
    first = np.concatenate([[True], np.diff(scan["inverse_map"][order]) != 0])
    return order[first]


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None
