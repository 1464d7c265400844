"""Rigid transforms as (4, 4) float64 matrices: building, inverting, and reading nuScenes devkit records."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def rigid_transform(rotation: np.ndarray, translation: Sequence[float] | np.ndarray) -> np.ndarray:
    """Matrix of a rotation and a translation.

    Parameters
    ----------
    rotation : (3, 3) rotation matrix.
    translation : (3,) translation.

    Returns
    -------
    (4, 4) float64 ``[[R, t], [0, 1]]``.
    """
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = translation
    return matrix


def invert_rigid(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform, ``[R^T, -R^T t]`` (exact where ``np.linalg.inv`` rounds).

    Parameters
    ----------
    matrix : (4, 4) rigid transform.

    Returns
    -------
    (4, 4) float64 inverse.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    rotation_t = matrix[:3, :3].T
    return rigid_transform(rotation_t, -rotation_t @ matrix[:3, 3])


def quaternion_transform(record: Mapping) -> np.ndarray:
    """Transform of a devkit ``calibrated_sensor`` / ``ego_pose`` record, with the devkit's rotation matrix.

    Parameters
    ----------
    record : holds ``rotation`` (4,) quaternion w, x, y, z and ``translation`` (3,).

    Returns
    -------
    (4, 4) float64 transform; the rotation is pyquaternion's ``rotation_matrix``, as in the devkit, so that
    projections repeat its arithmetic exactly.
    """
    from pyquaternion import Quaternion

    return rigid_transform(Quaternion(record["rotation"]).rotation_matrix, np.asarray(record["translation"], float))
