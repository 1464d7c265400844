"""The sensor rig: a 32-beam spinning lidar on the roof and six pinhole cameras placed like nuScenes'.

Frames follow nuScenes: the ego frame has x forward, y left, z up; the lidar frame x right, y forward, z up;
camera frames x right, y down, z forward. Every rotation is stored as a unit quaternion ``(w, x, y, z)`` and
rays are generated from the matrix of *that* quaternion, so that the calibration written to disk reproduces
the rendered geometry exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from slidr.config import NUSCENES_CAMERAS
from slidr.data.synth.world import KEYFRAME_INTERVAL_S, SceneConditions, World

LIDAR_CHANNEL = "LIDAR_TOP"

# nuScenes' mean focal lengths at 1600x900 and the cameras' yaw (degrees, left of forward) and mount position
_CAMERA_MOUNTS = {
    "CAM_FRONT": (1266.4, 0.0, (1.70, 0.016, 1.511)),
    "CAM_FRONT_RIGHT": (1260.8, -55.0, (1.551, -0.493, 1.496)),
    "CAM_BACK_RIGHT": (1259.5, -110.0, (1.015, -0.481, 1.562)),
    "CAM_BACK": (809.2, 180.0, (0.028, 0.003, 1.579)),
    "CAM_BACK_LEFT": (1256.7, 110.0, (1.036, 0.485, 1.591)),
    "CAM_FRONT_LEFT": (1272.6, 55.0, (1.524, 0.495, 1.509)),
}
LIDAR_TRANSLATION = (0.943713, 0.0, 1.84023)


@dataclass(frozen=True)
class LidarSpec:
    """A spinning lidar like nuScenes' Velodyne HDL-32E."""

    beams: int = 32
    elevation_deg: tuple[float, float] = (-30.67, 10.67)
    azimuth_steps: int = 1080
    max_range: float = 70.0
    min_range: float = 1.0
    range_noise: float = 0.015  # metres, standard deviation
    dropout: float = 0.03  # base fraction of lost returns


@dataclass(frozen=True)
class Sensor:
    """One sensor's mounting on the ego vehicle; ``intrinsic`` is None for the lidar."""

    channel: str
    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]  # (w, x, y, z), sensor -> ego
    intrinsic: np.ndarray | None = None
    width: int = 0
    height: int = 0

    @property
    def to_ego(self) -> np.ndarray:
        return pose_matrix(self.rotation, self.translation)

    @property
    def camera_matrix(self) -> np.ndarray:
        """(3, 3) ``intrinsic`` of a camera (the lidar has none)."""
        if self.intrinsic is None:
            raise ValueError(f"sensor {self.channel} is not a camera: it has no intrinsic")
        return self.intrinsic


def quaternion_to_matrix(q) -> np.ndarray:
    """(3, 3) rotation matrix of a quaternion ``(w, x, y, z)`` (normalised first)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Unit quaternion ``(w, x, y, z)`` with ``w >= 0`` of a (3, 3) rotation matrix."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = (0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s)
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = ((m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s)
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s)
    q = np.array(q) / np.linalg.norm(q)
    if q[0] < 0:
        q = -q
    w, x, y, z = (float(v) for v in q)
    return w, x, y, z


def pose_matrix(rotation, translation) -> np.ndarray:
    """(4, 4) transform from a quaternion ``(w, x, y, z)`` and a translation."""
    out = np.eye(4)
    out[:3, :3] = quaternion_to_matrix(rotation)
    out[:3, 3] = translation
    return out


def yaw_quaternion(yaw: float) -> tuple[float, float, float, float]:
    """Quaternion of a rotation by ``yaw`` radians about z."""
    return (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))


def build_rig(image_size: tuple[int, int]) -> list[Sensor]:
    """The lidar and the six cameras for images of ``image_size = (width, height)``.

    Focal lengths scale with the image (nuScenes' at 1600x900), the principal point is the image centre.
    """
    width, height = image_size
    sensors = [Sensor(LIDAR_CHANNEL, LIDAR_TRANSLATION, yaw_quaternion(-math.pi / 2))]
    # camera axes (x right, y down, z forward) in the ego frame for a camera looking forward
    forward_camera = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    for channel in NUSCENES_CAMERAS:
        focal, yaw_deg, translation = _CAMERA_MOUNTS[channel]
        yaw = math.radians(yaw_deg)
        turn = np.array([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0, 0, 1.0]])
        intrinsic = np.array([[focal * width / 1600.0, 0.0, width / 2.0],
                              [0.0, focal * height / 900.0, height / 2.0],
                              [0.0, 0.0, 1.0]])
        sensors.append(Sensor(channel, translation, matrix_to_quaternion(turn @ forward_camera), intrinsic,
                              width, height))
    return sensors


def ego_pose(world: World, conditions: SceneConditions, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Ego -> street and ego -> global (4, 4) transforms at keyframe ``frame``.

    The ego vehicle drives along +x in its lane at constant speed, with a small sway.
    """
    t = frame * KEYFRAME_INTERVAL_S
    phase = conditions.seed % 1000 / 1000.0 * 2 * math.pi
    x = conditions.speed * t
    y = world.ego_lane_y + 0.15 * math.sin(0.6 * t + phase)
    yaw = 0.02 * math.cos(0.6 * t + phase)
    to_street = pose_matrix(yaw_quaternion(yaw), (x, y, 0.0))
    to_global = world.street_to_global @ to_street
    # re-express through a quaternion so that the stored pose and the rendered one are the same numbers
    to_global = pose_matrix(matrix_to_quaternion(to_global[:3, :3]), to_global[:3, 3])
    to_street = np.linalg.inv(world.street_to_global) @ to_global
    return to_street, to_global


def lidar_rays(spec: LidarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions in the lidar frame, in firing order (azimuth-major), and each ray's ring index.

    Returns
    -------
    directions : (A * B, 3) float64
    ring : (A * B,) int64, 0 = lowest beam
    """
    elevation = np.radians(np.linspace(spec.elevation_deg[0], spec.elevation_deg[1], spec.beams))
    azimuth = np.linspace(0, 2 * np.pi, spec.azimuth_steps, endpoint=False)
    az, el = np.meshgrid(azimuth, elevation, indexing="ij")
    directions = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1).reshape(-1, 3)
    ring = np.broadcast_to(np.arange(spec.beams), az.shape).reshape(-1)
    return directions, ring.astype(np.int64)


def camera_rays(intrinsic: np.ndarray, width: int, height: int) -> np.ndarray:
    """Unit directions in the camera frame through each pixel centre, row-major.

    Pixel ``(row, col)`` is centred on image coordinates ``(u, v) = (col, row)``, so a point that projects to
    ``(u, v)`` lies in pixel ``(round(v), round(u))``, the convention of :mod:`slidr.data.projection`.

    Returns
    -------
    (height * width, 3) float64
    """
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pixels = np.stack([cols.ravel(), rows.ravel(), np.ones(cols.size)], axis=1)
    directions = pixels @ np.linalg.inv(intrinsic).T
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)
