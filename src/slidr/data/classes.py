"""Class definitions and label maps of nuScenes lidarseg and SemanticKITTI.

nuScenes lidarseg: 32 raw categories (``category.json`` ``index``), evaluated on 16 classes; raw categories that
are not evaluated map to 0 (ignore). SemanticKITTI: raw ids of the ``.label`` files (lower 16 bits), evaluated on
19 classes with the standard ``learning_map`` of ``semantic-kitti.yaml``; 0 is ignore.
"""

from __future__ import annotations

import numpy as np

from slidr.errors import DataError

IGNORE_INDEX = 0

# The devkit's 32 lidarseg categories, in ``index`` order.
NUSCENES_CATEGORIES: tuple[str, ...] = (
    "noise",
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
    "flat.driveable_surface",
    "flat.other",
    "flat.sidewalk",
    "flat.terrain",
    "static.manmade",
    "static.other",
    "static.vegetation",
    "vehicle.ego",
)
NUSCENES_CATEGORY_INDEX = {name: index for index, name in enumerate(NUSCENES_CATEGORIES)}

# The 16 evaluation classes of the nuScenes lidarseg challenge; evaluation index = position + 1.
NUSCENES_CLASSES: tuple[str, ...] = (
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
    "driveable_surface",
    "other_flat",
    "sidewalk",
    "terrain",
    "manmade",
    "vegetation",
)

_NUSCENES_RAW_TO_CLASS = {
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.barrier": "barrier",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
    "flat.driveable_surface": "driveable_surface",
    "flat.other": "other_flat",
    "flat.sidewalk": "sidewalk",
    "flat.terrain": "terrain",
    "static.manmade": "manmade",
    "static.vegetation": "vegetation",
}

# raw category index (0..31) -> evaluation index (0 = ignore, 1..16)
NUSCENES_LEARNING_MAP = np.zeros(len(NUSCENES_CATEGORIES), dtype=np.int64)
for _raw, _name in _NUSCENES_RAW_TO_CLASS.items():
    NUSCENES_LEARNING_MAP[NUSCENES_CATEGORY_INDEX[_raw]] = NUSCENES_CLASSES.index(_name) + 1

# The 19 evaluation classes of SemanticKITTI; evaluation index = position + 1.
SEMANTICKITTI_CLASSES: tuple[str, ...] = (
    "car",
    "bicycle",
    "motorcycle",
    "truck",
    "other-vehicle",
    "person",
    "bicyclist",
    "motorcyclist",
    "road",
    "parking",
    "sidewalk",
    "other-ground",
    "building",
    "fence",
    "vegetation",
    "trunk",
    "terrain",
    "pole",
    "traffic-sign",
)

# SemanticKITTI raw id -> name (semantic-kitti.yaml ``labels``)
SEMANTICKITTI_RAW_LABELS: dict[int, str] = {
    0: "unlabeled", 1: "outlier", 10: "car", 11: "bicycle", 13: "bus", 15: "motorcycle", 16: "on-rails",
    18: "truck", 20: "other-vehicle", 30: "person", 31: "bicyclist", 32: "motorcyclist", 40: "road",
    44: "parking", 48: "sidewalk", 49: "other-ground", 50: "building", 51: "fence", 52: "other-structure",
    60: "lane-marking", 70: "vegetation", 71: "trunk", 72: "terrain", 80: "pole", 81: "traffic-sign",
    99: "other-object", 252: "moving-car", 253: "moving-bicyclist", 254: "moving-person",
    255: "moving-motorcyclist", 256: "moving-on-rails", 257: "moving-bus", 258: "moving-truck",
    259: "moving-other-vehicle",
}

# semantic-kitti.yaml ``learning_map``: raw id -> evaluation index (0 = ignore)
SEMANTICKITTI_LEARNING_MAP_DICT: dict[int, int] = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10, 48: 11,
    49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0, 252: 1, 253: 7,
    254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}

_SEMANTICKITTI_LUT = np.full(260, -1, dtype=np.int64)
for _raw_id, _eval_index in SEMANTICKITTI_LEARNING_MAP_DICT.items():
    _SEMANTICKITTI_LUT[_raw_id] = _eval_index


def class_names(dataset: str) -> tuple[str, ...]:
    """Evaluation class names of ``dataset`` ("nuscenes" or "semantickitti"); index i+1 is class i."""
    if dataset == "nuscenes":
        return NUSCENES_CLASSES
    if dataset == "semantickitti":
        return SEMANTICKITTI_CLASSES
    raise ValueError(f"unknown dataset {dataset!r}; expected 'nuscenes' or 'semantickitti'")


def map_nuscenes_labels(raw: np.ndarray, source: str = "labels") -> np.ndarray:
    """Map nuScenes lidarseg raw category indices (N,) uint8 to evaluation indices (N,) int64 (0 = ignore)."""
    raw = np.asarray(raw)
    if raw.size and int(raw.max()) >= len(NUSCENES_CATEGORIES):
        bad = np.unique(raw[raw >= len(NUSCENES_CATEGORIES)])[:10].tolist()
        raise DataError(f"{source}: unknown nuScenes lidarseg category indices {bad} (valid: 0..31)")
    return NUSCENES_LEARNING_MAP[raw.astype(np.int64)]


def map_semantickitti_labels(raw: np.ndarray, source: str = "labels") -> np.ndarray:
    """Map SemanticKITTI ``.label`` values (N,) uint32 to evaluation indices (N,) int64 (0 = ignore).

    The lower 16 bits hold the semantic id (the upper 16 the instance id).
    """
    semantic = np.asarray(raw).astype(np.int64) & 0xFFFF
    valid = semantic < len(_SEMANTICKITTI_LUT)
    mapped = np.full(semantic.shape, -1, dtype=np.int64)
    mapped[valid] = _SEMANTICKITTI_LUT[semantic[valid]]
    if (mapped < 0).any():
        bad = np.unique(semantic[mapped < 0])[:10].tolist()
        raise DataError(f"{source}: unknown SemanticKITTI label ids {bad}")
    return mapped
