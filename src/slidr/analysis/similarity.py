"""Feature similarity maps (the seed's Figures 4 and 5).

For a query lidar point, (a) the cosine similarity between its 3D feature and every pixel feature of an image of
the same scene (the image teacher + head of the pretraining), and (b) the cosine similarity between its 3D feature
and the 3D features of the other points that project into that image. Both are drawn side by side with viridis
(violet = low, yellow = high) and the query as a red dot.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np
import torch

from slidr.config import with_changes
from slidr.errors import SlidrError, UsageError
from slidr.utils.io import save_figure


def cosine_similarity_maps(query: torch.Tensor, pixel_features: torch.Tensor,
                           point_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of one feature with every pixel feature and every point feature.

    Parameters
    ----------
    query : (C,) float tensor
        The query point's 3D feature.
    pixel_features : (C, H, W) float tensor
        Per-pixel features of one image.
    point_features : (P, C) float tensor
        Features of the points projected into that image.

    Returns
    -------
    pixel_map : (H, W) tensor in [-1, 1]
    point_values : (P,) tensor in [-1, 1]
    """
    query = torch.nn.functional.normalize(query.reshape(-1), dim=0)
    pixels = torch.nn.functional.normalize(pixel_features, dim=0)
    points = torch.nn.functional.normalize(point_features, dim=1)
    return torch.einsum("c,chw->hw", query, pixels), points @ query


def choose_query(pixel_rc: np.ndarray, *, index: int | None = None, pixel: tuple[int, int] | None = None,
                 class_index: int | None = None, labels: np.ndarray | None = None,
                 rng: np.random.Generator | None = None) -> int:
    """Pick the query among the points projected into the image; returns its position in ``pixel_rc``.

    Exactly one way: ``index`` (a position in ``pixel_rc``), ``pixel`` (row, column: the nearest projected point),
    or ``class_index`` with ``labels`` (M,) of the projected points (a random one of that class, drawn with
    ``rng``).
    """
    if sum(option is not None for option in (index, pixel, class_index)) != 1:
        raise SlidrError("choose the query point by exactly one of: point index, pixel, or class")
    if len(pixel_rc) == 0:
        raise SlidrError("no lidar point projects into this image; choose another camera or sample")
    if index is not None:
        if not 0 <= index < len(pixel_rc):
            raise SlidrError(f"query index {index} is out of range: {len(pixel_rc)} points project into the image")
        return int(index)
    if pixel is not None:
        distance = ((pixel_rc - np.asarray(pixel)[None]) ** 2).sum(axis=1)
        return int(np.argmin(distance))
    if labels is None:
        raise SlidrError("choosing the query by class needs labels; this sample has none")
    candidates = np.flatnonzero(labels == class_index)
    if len(candidates) == 0:
        raise SlidrError(f"no point of class index {class_index} projects into this image")
    return int((rng or np.random.default_rng(0)).choice(candidates))


def render_similarity(image: np.ndarray, pixel_map: np.ndarray, pixel_rc: np.ndarray, point_values: np.ndarray,
                      query: int, path: str | Path, title: str = "") -> Path:
    """Write the two maps side by side as a PNG.

    Parameters
    ----------
    image : (H, W, 3) uint8 camera image (shown faintly under the point map).
    pixel_map : (H, W) similarity with the image features.
    pixel_rc : (P, 2) row/column of the projected points.
    point_values : (P,) similarity with the points' 3D features.
    query : position of the query in ``pixel_rc``.
    path : PNG destination.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    height, width = pixel_map.shape
    figure, axes = plt.subplots(1, 2, figsize=(13, 3.6 * height / width * 2 + 0.8), dpi=100)
    # each map on its own range (as the paper's figures): the 2D and 3D similarities live on different scales
    shown = axes[0].imshow(pixel_map, cmap="viridis")
    axes[0].set_title("3D query vs 2D pixel features")
    axes[1].imshow(image, alpha=0.35)
    axes[1].set_facecolor("black")
    order = np.argsort(point_values)
    points = axes[1].scatter(pixel_rc[order, 1], pixel_rc[order, 0], c=point_values[order], cmap="viridis", s=3,
                             linewidths=0)
    axes[1].set_xlim(0, width)
    axes[1].set_ylim(height, 0)
    axes[1].set_title("3D query vs 3D point features")
    for axis in axes:
        axis.scatter([pixel_rc[query, 1]], [pixel_rc[query, 0]], c="red", s=60, edgecolors="white", linewidths=1)
        axis.axis("off")
    figure.colorbar(shown, ax=axes[0], fraction=0.03, pad=0.01, label="cosine similarity")
    figure.colorbar(points, ax=axes[1], fraction=0.03, pad=0.01, label="cosine similarity")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path, bbox_inches="tight")


# --------------------------------------------------------------------------------------------------------------
# From a pretrained file and a sample to the picture
# --------------------------------------------------------------------------------------------------------------


def load_pretrained_networks(pretrained: str | Path, voxel_cfg=None) -> tuple[Any, torch.nn.Module, torch.nn.Module]:
    """The pretraining config, 3D network and image teacher (encoder + trained head) of an exported file.

    The encoder weights come from the file itself when it holds them (``model_images_encoder``), else from the
    pretraining's ``image.weights`` file.

    Raises
    ------
    SlidrError
        The file is not an exported pretraining of an image-to-lidar method, or the teacher's encoder cannot be
        restored (a randomly initialised teacher that was not saved).
    """
    from slidr.engine.checkpoint import load_backbone, load_pretraining_export
    from slidr.models.image import build_image_model
    from slidr.models.unet import build_backbone

    payload, cfg = load_pretraining_export(pretrained, "similarity")
    if not payload.get("model_images_head"):
        raise UsageError(f"{pretrained} is the pretraining of {cfg.method}, which has no image head; slidr "
                         "similarity needs an image-to-lidar pretraining (slidr, ppkt): the similarity with image "
                         "features needs the trained image head")
    model_points = build_backbone(cfg.backbone)
    load_backbone(pretrained, model_points, voxel_cfg)
    encoder_state = payload.get("model_images_encoder")
    if encoder_state is None and cfg.image.weights is None:
        raise SlidrError(f"{pretrained} was pretrained with a randomly initialised image teacher whose weights "
                         "were not saved, so its pixel features cannot be recomputed")
    image_cfg = dataclasses.replace(cfg.image, weights=None) if encoder_state is not None else cfg.image
    model_images = build_image_model(image_cfg)
    if encoder_state is not None:
        model_images.encoder.load_state_dict(encoder_state)
    # a pretraining teacher has a head (image.out_channels is set)
    cast(torch.nn.Conv2d, model_images.head).load_state_dict(payload["model_images_head"])
    return cfg, model_points.eval(), model_images.eval()


def similarity_figure(pretrained: str | Path, out: str | Path, *, index: Optional[str] = None, sample: int = 0,
                      camera: Optional[str] = None, query_index: Optional[int] = None,
                      query_pixel: Optional[tuple[int, int]] = None, query_class: Optional[str] = None,
                      seed: int = 0) -> dict:
    """Compute both similarity maps for one query point of one sample and write the PNG.

    Parameters
    ----------
    pretrained : exported pretraining file (``pretrained.pt``).
    out : PNG path.
    index : dataset index (default: the pretraining's ``data.index``).
    sample : position of the sample in the index.
    camera : camera channel (default: the pretraining's first camera).
    query_index, query_pixel, query_class : how to choose the query (exactly one; by default a random point of
        the image).
    seed : seed of a random choice.

    Returns
    -------
    dict
        ``png``, ``sample_token``, ``camera``, ``query`` (point index in the scan, pixel), ``query_class``,
        ``points_in_image``, and the mean similarity of the query with points of its own class vs the others
        (when the sample is labelled).
    """
    from slidr.data.classes import class_names
    from slidr.data.datasets import PretrainDataset
    from slidr.data.index import index_dataset, load_index

    payload_cfg, model_points, model_images = load_pretrained_networks(pretrained)
    data_cfg = with_changes(payload_cfg.data, {"index": index or payload_cfg.data.index, "augment.enabled": False,
                                               "superpixels.method": "none"})  # superpixels: not needed here
    dataset_index = load_index(data_cfg.index)
    data_cfg = with_changes(data_cfg, {"dataset": index_dataset(dataset_index, "slidr similarity")})
    if not 0 <= sample < len(dataset_index):
        raise SlidrError(f"sample {sample} is out of range: {data_cfg.index} has {len(dataset_index)} samples")
    data_cfg = with_changes(data_cfg, {"cameras": [camera or data_cfg.cameras[0]]})
    dataset = PretrainDataset(dataset_index, None, data_cfg, train=False)
    item = int(np.flatnonzero(dataset.positions == sample)[0])
    scan = dataset[item]
    names = class_names(data_cfg.dataset)

    with torch.no_grad():
        voxel_features = model_points(_sparse(scan))
        point_features = voxel_features[torch.from_numpy(scan["inverse_map"])][torch.from_numpy(scan["pairing_points"])]
        pixel_features = model_images(torch.from_numpy(scan["images"]))[0]
    pixel_rc = scan["pairing_images"][:, 1:]
    labels = scan["labels"][scan["pairing_points"]] if scan.get("labels") is not None else None
    if query_index is None and query_pixel is None and query_class is None:
        query_index = int(np.random.default_rng(seed).integers(len(pixel_rc))) if len(pixel_rc) else 0
    class_index = None
    if query_class is not None:
        if query_class not in names:
            raise SlidrError(f"unknown class {query_class!r}; classes of {data_cfg.dataset}: {', '.join(names)}")
        class_index = names.index(query_class) + 1
    position = choose_query(pixel_rc, index=query_index, pixel=query_pixel, class_index=class_index, labels=labels,
                            rng=np.random.default_rng(seed))
    pixel_map, point_values = cosine_similarity_maps(point_features[position], pixel_features, point_features)
    image = denormalize_image(scan["images"][0])
    query_name = names[labels[position] - 1] if labels is not None and labels[position] > 0 else None
    title = f"sample {sample} {data_cfg.cameras[0]}, query point {int(scan['pairing_points'][position])}" + (
        f" ({query_name})" if query_name else "")
    png = render_similarity(image, pixel_map.numpy(), pixel_rc, point_values.numpy(), position, out, title=title)
    result = {"png": str(png), "sample_token": scan["token"], "camera": data_cfg.cameras[0],
              "query": {"point": int(scan["pairing_points"][position]), "pixel": pixel_rc[position].tolist()},
              "query_class": query_name, "points_in_image": int(len(pixel_rc))}
    if labels is not None and labels[position] > 0:
        same = labels == labels[position]
        values = point_values.numpy()
        result["mean_similarity_same_class"] = float(values[same].mean())
        result["mean_similarity_other_classes"] = float(values[~same & (labels > 0)].mean()) \
            if (~same & (labels > 0)).any() else None
    return result


def _sparse(scan: dict):
    from slidr.models.sparse import SparseTensor

    coords = torch.from_numpy(scan["voxel_coords"])
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=coords.dtype), coords], dim=1)
    return SparseTensor(coords, torch.from_numpy(scan["voxel_feats"]))


def denormalize_image(image: np.ndarray) -> np.ndarray:
    """(3, H, W) ImageNet-normalised float -> (H, W, 3) uint8."""
    from slidr.data.augment import IMAGENET_MEAN, IMAGENET_STD

    rgb = image.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
