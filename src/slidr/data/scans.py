"""Reading a sample's point cloud and labels, as an index names them."""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from slidr.data.index import DatasetIndex
from slidr.data.io import (
    NUSCENES_POINT_DIMS,
    SEMANTICKITTI_POINT_DIMS,
    read_nuscenes_lidarseg,
    read_points,
    read_semantickitti_labels,
)
from slidr.utils.log import logger


class Scan(NamedTuple):
    """One sample's point cloud as read by :func:`load_scan`.

    Attributes
    ----------
    points : (N, 4) float32 x, y, z, intensity (raw: nuScenes 0..255, SemanticKITTI 0..1), finite points only.
    labels : (N,) int64 evaluation indices (0 = ignore), or None when the sample is unlabelled.
    num_dropped : points of the file dropped for NaN or infinite values.
    """

    points: np.ndarray
    labels: Optional[np.ndarray]
    num_dropped: int


def load_scan(index: DatasetIndex, sample: dict, with_labels: bool = True) -> Scan:
    """Read a sample's points and (if labelled and asked for) labels, dropping non-finite points from both.

    Raises
    ------
    DataError
        A truncated point file, or a label file whose length differs from the scan (each message names the file).
    """
    nuscenes = index.format == "nuscenes"
    lidar = index.resolve(sample["lidar"])
    read = read_points(lidar, NUSCENES_POINT_DIMS if nuscenes else SEMANTICKITTI_POINT_DIMS)
    labels = None
    label_file = sample.get("lidarseg" if nuscenes else "labels")
    if with_labels and label_file:
        reader = read_nuscenes_lidarseg if nuscenes else read_semantickitti_labels
        labels = reader(index.resolve(label_file), read.kept.size)
        if read.num_dropped:
            labels = labels[read.kept]
    if read.num_dropped:
        logger.debug("%s: dropped %d points with NaN or infinite values", lidar, read.num_dropped)
    return Scan(np.ascontiguousarray(read.points[:, :4]), labels, read.num_dropped)
