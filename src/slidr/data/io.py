"""Readers of the raw sensor files, with validation: bad files raise :class:`DataError` naming the file.

Point files are flat little-endian float32 records: nuScenes ``.pcd.bin`` has 5 values per point (x, y, z,
intensity 0..255, ring index), SemanticKITTI / KITTI ``.bin`` has 4 (x, y, z, reflectance 0..1). Points with a
NaN or infinite value are dropped; :func:`read_points` returns the mask of kept points so that per-point labels
can be filtered the same way and the drop can be counted and reported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from slidr.data.classes import map_nuscenes_labels, map_semantickitti_labels
from slidr.errors import DataError

NUSCENES_POINT_DIMS = 5
SEMANTICKITTI_POINT_DIMS = 4
# `slidr synth` writes it at the root of a generated world; `slidr prepare` recognises the world by it (here, not in
# slidr.data.synth, so that preparing real data never imports the generator and numba).
SYNTH_SUMMARY_FILE = "synth_summary.json"


class PointsRead(NamedTuple):
    """What :func:`read_points` returns.

    Attributes
    ----------
    points : (M, dims) float32, the finite points of the file, in file order.
    kept : (N,) bool, which of the file's N points are in ``points``.
    """

    points: np.ndarray
    kept: np.ndarray

    @property
    def num_dropped(self) -> int:
        """Points of the file dropped for a NaN or infinite value."""
        return int(self.kept.size - self.points.shape[0])


def read_points(path: str | Path, dims: int) -> PointsRead:
    """Read a float32 point file of ``dims`` values per point, dropping non-finite points.

    Parameters
    ----------
    path : the ``.bin`` file.
    dims : values per point (5 for nuScenes, 4 for SemanticKITTI).

    Returns
    -------
    PointsRead
        ``points`` (M, dims) float32 and ``kept`` (N,) bool over the file's N records.

    Raises
    ------
    DataError
        The file is missing, empty, or its size is not a multiple of the record size ``4 * dims`` bytes.
    """
    path = Path(path)
    record = 4 * dims
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise DataError(f"point file {path} does not exist") from None
    if size == 0:
        raise DataError(f"point file {path} is empty")
    if size % record:
        raise DataError(
            f"point file {path} is truncated or misshapen: {size} bytes is not a multiple of the record size "
            f"{record} bytes ({dims} float32 values per point)"
        )
    points = np.fromfile(path, dtype="<f4").reshape(-1, dims)
    kept = np.isfinite(points).all(axis=1)
    if not kept.all():
        points = points[kept]
    return PointsRead(points, kept)


def _read_label_array(path: Path, dtype: str, num_points: int, what: str) -> np.ndarray:
    try:
        labels = np.fromfile(path, dtype=dtype)
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist") from None
    if labels.size != num_points:
        raise DataError(
            f"{what} file {path} has {labels.size} labels ({os.stat(path).st_size} bytes) but its scan has "
            f"{num_points} points"
        )
    return labels


def read_nuscenes_lidarseg(path: str | Path, num_points: int) -> np.ndarray:
    """Read a nuScenes ``_lidarseg.bin`` file and map it to evaluation indices.

    Parameters
    ----------
    path : the lidarseg file (one uint8 raw category index per point).
    num_points : the number of points of the scan *as stored in its file* (before dropping non-finite points).

    Returns
    -------
    (num_points,) int64 evaluation indices, 0 = ignore, 1..16 = ``NUSCENES_CLASSES``.
    """
    path = Path(path)
    return map_nuscenes_labels(_read_label_array(path, "u1", num_points, "lidarseg"), source=str(path))


def read_semantickitti_labels(path: str | Path, num_points: int) -> np.ndarray:
    """Read a SemanticKITTI ``.label`` file and map it to evaluation indices with the standard learning map.

    Parameters
    ----------
    path : the label file (one little-endian uint32 per point: semantic id in the lower 16 bits).
    num_points : the number of points of the scan as stored in its file.

    Returns
    -------
    (num_points,) int64 evaluation indices, 0 = ignore, 1..19 = ``SEMANTICKITTI_CLASSES``.
    """
    path = Path(path)
    return map_semantickitti_labels(_read_label_array(path, "<u4", num_points, "label"), source=str(path))


# Pillow frees every decoded image's memory and allocates fresh memory for the next one (page faults: ~7% of a
# nuScenes sample's decoding); keeping a few freed blocks for reuse avoids that. Pillow's default keeps none; a
# PILLOW_BLOCKS_MAX environment variable (Pillow's own setting) takes precedence.
_PILLOW_BLOCKS_KEPT = 8
_pillow_blocks_set = False


def _keep_pillow_blocks(image_module) -> None:
    global _pillow_blocks_set
    if _pillow_blocks_set:
        return
    _pillow_blocks_set = True
    core = image_module.core
    if "PILLOW_BLOCKS_MAX" not in os.environ and hasattr(core, "set_blocks_max") and core.get_blocks_max() == 0:
        core.set_blocks_max(_PILLOW_BLOCKS_KEPT)


def open_image(path: str | Path):
    """Open an image lazily with Pillow (nothing decoded yet: callers may ``draft``/crop before decoding).

    The first call lets Pillow keep up to 8 freed memory blocks for reuse (unless ``PILLOW_BLOCKS_MAX`` is set).

    Raises
    ------
    DataError
        The file is missing or is not an image Pillow can read.
    """
    from PIL import Image, UnidentifiedImageError

    _keep_pillow_blocks(Image)
    path = Path(path)
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"image file {path} cannot be read: {error}") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 RGB array.

    Raises
    ------
    DataError
        The file is missing, not an image, or truncated.
    """
    image = open_image(path)
    try:
        with image:
            return np.asarray(image.convert("RGB"))
    except OSError as error:
        raise DataError(f"image file {path} cannot be decoded: {error}") from None
