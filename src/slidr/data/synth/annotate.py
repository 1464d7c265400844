"""Object annotations of the synthetic world: 3D boxes, lidar point counts, visibility and KITTI labels.

Every object instance (vehicles, two-wheelers, pedestrians, barriers, cones and bins) gets the box of
:func:`slidr.data.synth.world.instance_boxes` grown by ``ANNOTATION_MARGIN_M`` on every side: the boxes touch the
analytic surfaces, and the lidar's range noise would otherwise put up to half of the returns of a face just
outside them (real annotations have such a margin too).

Per keyframe and camera, the renderer's per-pixel instance map gives the pixels where each object is seen; the
pixels it would cover with nothing in front come from casting the same pixel rays against that object's
primitives only, inside its projected 2D box. Their ratio is the object's visible fraction, which gives nuScenes'
visibility level (over all six cameras, as the devkit defines it) and KITTI's occlusion level (front camera).
Nothing here draws random numbers: the sensor data do not depend on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from slidr.data.boxes import (
    KittiLabels,
    box_corners,
    kitti_camera_corners,
    lidar_to_kitti_camera,
    lidar_to_nuscenes,
    observation_angle,
    project_boxes_to_image,
    transform_boxes,
)
from slidr.data.classes import NUSCENES_CATEGORIES
from slidr.data.synth.raycast import hits_of_groups
from slidr.data.synth.sensors import Sensor
from slidr.data.synth.world import World, instance_boxes

# 3 standard deviations of the lidar's range noise in rain (LidarSpec.range_noise 0.015 m x 1.6)
ANNOTATION_MARGIN_M = 0.075

# nuScenes visibility tokens "1".."4" = visible fraction in [0, 0.4), [0.4, 0.6), [0.6, 0.8), [0.8, 1]
NUSCENES_VISIBILITY_EDGES = (0.4, 0.6, 0.8)
# KITTI occlusion 0 (fully visible) / 1 (partly occluded) / 2 (largely occluded) for visible fractions of at least
# 0.8 / at least 0.4 / below 0.4 (the KITTI readme names the levels without thresholds; 3 "unknown" is not used)
KITTI_OCCLUSION_EDGES = (0.4, 0.8)

# KITTI types of the synthetic categories. The world has no riders, so no Cyclist (a parked bicycle or motorcycle
# is Misc, as KITTI labels riderless two-wheelers), no Van, Tram or Person_sitting. Buses, trailers and
# construction vehicles are Misc (KITTI's "Misc" covers trailers and other vehicles); barriers and cones, which
# KITTI does not annotate, are Misc too so that every detection-class object has a line. Bins get no line.
KITTI_TYPES_BY_CATEGORY = {
    "vehicle.car": "Car",
    "vehicle.truck": "Truck",
    "vehicle.bus.rigid": "Misc",
    "vehicle.bus.bendy": "Misc",
    "vehicle.trailer": "Misc",
    "vehicle.construction": "Misc",
    "vehicle.motorcycle": "Misc",
    "vehicle.bicycle": "Misc",
    "human.pedestrian.adult": "Pedestrian",
    "human.pedestrian.child": "Pedestrian",
    "human.pedestrian.construction_worker": "Pedestrian",
    "human.pedestrian.police_officer": "Pedestrian",
    "movable_object.barrier": "Misc",
    "movable_object.trafficcone": "Misc",
}


@dataclass(frozen=True)
class SceneObjects:
    """The annotated objects of one scene (street frame); rows follow ``instance``."""

    instance: np.ndarray  # (K,) int32
    category: np.ndarray  # (K,) uint8 nuScenes raw category index
    boxes: np.ndarray  # (K, 7) [x, y, z, l, w, h, yaw] with the annotation margin
    parked: np.ndarray  # (K,) bool: in a parking strip or off the road
    members: tuple  # K arrays of primitive indices
    member_start: np.ndarray  # (K + 1,) int64: object k's primitives are member_items[member_start[k]:...[k + 1]]
    member_items: np.ndarray  # (M,) int64, the members concatenated

    @property
    def category_names(self) -> list[str]:
        return [NUSCENES_CATEGORIES[int(c)] for c in self.category]


def scene_objects(world: World) -> SceneObjects:
    """Boxes of every object instance of ``world`` (see the module docstring)."""
    tight = instance_boxes(world)
    boxes = tight.boxes.copy()
    boxes[:, 3:6] += 2 * ANNOTATION_MARGIN_M
    order = np.argsort(world.instance, kind="stable")
    sorted_ids = world.instance[order]
    starts = np.searchsorted(sorted_ids, tight.instance, side="left")
    ends = np.searchsorted(sorted_ids, tight.instance, side="right")
    members = tuple(order[a:b].astype(np.int64) for a, b in zip(starts, ends))
    member_start = np.zeros(len(members) + 1, dtype=np.int64)
    np.cumsum([len(m) for m in members], out=member_start[1:])
    lateral = np.abs(tight.boxes[:, 1])
    parked = lateral >= world.road_half_width - world.parking_width if world.parking_width > 0 else \
        lateral > world.road_half_width
    return SceneObjects(tight.instance, tight.category, boxes, parked, members, member_start,
                        np.concatenate(members) if members else np.zeros(0, dtype=np.int64))


def attributes(category: str, parked: bool) -> list[str]:
    """nuScenes attribute names of a (static) object of ``category``."""
    if category in ("vehicle.bicycle", "vehicle.motorcycle"):
        return ["cycle.without_rider"]
    if category.startswith("vehicle."):
        return ["vehicle.parked" if parked else "vehicle.stopped"]
    if category.startswith("human.pedestrian."):
        return ["pedestrian.standing"]
    return []


@dataclass(frozen=True)
class CameraObjects:
    """What one camera sees of each object of a :class:`SceneObjects` (rows follow it)."""

    visible: np.ndarray  # (K,) int64 pixels where the object is the first surface hit
    silhouette: np.ndarray  # (K,) int64 pixels it would cover with nothing in front of it
    in_image: np.ndarray  # (K,) bool: its projected box overlaps the image


def camera_objects(world: World, objects: SceneObjects, camera: Sensor, camera_to_street: np.ndarray,
                   pixel_rays: np.ndarray, instance_map: np.ndarray, t_max: float) -> CameraObjects:
    """Visible and unoccluded pixel counts of every object in one rendered camera image.

    Parameters
    ----------
    world, objects : the scene and its objects.
    camera : the camera (intrinsic, size).
    camera_to_street : (4, 4) the camera's pose when the image was rendered.
    pixel_rays : (H * W, 3) the renderer's ray directions in the camera frame
        (:func:`slidr.data.synth.sensors.camera_rays`).
    instance_map : (H, W) int32 instance id seen at each pixel (0: stuff or sky).
    t_max : the rendering's ray length (objects farther away are not seen).
    """
    count = len(objects.instance)
    visible = np.zeros(count, dtype=np.int64)
    silhouette = np.zeros(count, dtype=np.int64)
    height, width = camera.height, camera.width
    street_to_camera = np.linalg.inv(camera_to_street)
    corners = box_corners(objects.boxes) @ street_to_camera[:3, :3].T + street_to_camera[:3, 3]
    projection = np.hstack([camera.camera_matrix, np.zeros((3, 1))])
    image_boxes = project_boxes_to_image(corners, projection, (height, width))
    if not image_boxes.valid.any():
        return CameraObjects(visible, silhouette, image_boxes.valid)
    visible[:] = _count_by_object(instance_map, objects)
    # the pixels inside each object's 2D box where something else is seen, cast in one call against that object's
    # primitives only (the pixels showing the object are hits already)
    seen_instance = instance_map.ravel()
    pixels, owner = [], []
    for k in np.flatnonzero(image_boxes.valid):
        left, top, right, bottom = image_boxes.clipped[k]
        cols = np.arange(math.ceil(left), math.floor(right) + 1)
        rows = np.arange(math.ceil(top), math.floor(bottom) + 1)
        inside = (rows[:, None] * width + cols[None, :]).ravel()
        inside = inside[seen_instance[inside] != objects.instance[k]]
        pixels.append(inside)
        owner.append(np.full(inside.size, k, dtype=np.int64))
    pixels_all = np.concatenate(pixels)
    owner_all = np.concatenate(owner)
    directions = pixel_rays[pixels_all] @ camera_to_street[:3, :3].T
    hit = hits_of_groups(camera_to_street[:3, 3], directions, owner_all, objects.member_start, objects.member_items,
                         t_max, world.kinds, world.params)
    silhouette[:] = visible + np.bincount(owner_all[hit], minlength=count)
    return CameraObjects(visible, silhouette, image_boxes.valid)


def _count_by_object(instance_ids: np.ndarray, objects: SceneObjects) -> np.ndarray:
    """(K,) int64 how many of ``instance_ids`` (any shape; 0 = no object) name each object."""
    if not len(objects.instance):
        return np.zeros(0, dtype=np.int64)
    counts = np.bincount(np.asarray(instance_ids).ravel(), minlength=int(objects.instance.max()) + 1)
    return counts[objects.instance].astype(np.int64)


def visible_fraction(visible: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
    """(K,) visible / silhouette pixels, 0 where the object covers no pixel."""
    visible = np.asarray(visible, dtype=np.float64)
    silhouette = np.asarray(silhouette, dtype=np.float64)
    return np.where(silhouette > 0, visible / np.maximum(silhouette, 1.0), 0.0)


def nuscenes_annotations(world: World, objects: SceneObjects, lidar_to_street: np.ndarray,
                         lidar_instance: np.ndarray, cameras: list[CameraObjects], max_range: float) -> list[dict]:
    """The ``sample_annotation`` content of one keyframe: every object within ``max_range`` of the lidar or with
    lidar returns (as nuScenes, objects hidden from every sensor within range are annotated too, with 0 points).

    Parameters
    ----------
    world, objects : the scene and its objects.
    lidar_to_street : (4, 4) the lidar's pose at the keyframe.
    lidar_instance : (N,) instance id of each lidar point (0: stuff, rain).
    cameras : what each of the six cameras sees of the objects.
    max_range : metres, horizontal distance from the lidar to the box centre.

    Returns
    -------
    One dict per annotated object: ``instance``, ``category`` (name), ``translation``, ``size`` (w, l, h),
    ``rotation`` (w, x, y, z) in the global frame, ``num_lidar_pts`` (returns from the object), ``visibility``
    ("1".."4"), ``attributes`` (names).
    """
    offset = objects.boxes[:, :2] - lidar_to_street[:2, 3]
    points = _count_by_object(lidar_instance, objects)
    near = np.flatnonzero((np.hypot(offset[:, 0], offset[:, 1]) <= max_range) | (points > 0))
    visible = np.sum([camera.visible for camera in cameras], axis=0)
    silhouette = np.sum([camera.silhouette for camera in cameras], axis=0)
    level = 1 + np.searchsorted(NUSCENES_VISIBILITY_EDGES, visible_fraction(visible, silhouette), side="right")
    translation, size, rotation = lidar_to_nuscenes(objects.boxes[near], world.street_to_global)
    names = objects.category_names
    out = []
    for row, k in enumerate(near):
        out.append({
            "instance": int(objects.instance[k]), "category": names[k],
            "translation": translation[row].tolist(), "size": size[row].tolist(),
            "rotation": rotation[row].tolist(), "num_lidar_pts": int(points[k]),
            "visibility": str(int(level[k])), "attributes": attributes(names[k], bool(objects.parked[k])),
        })
    return out


def kitti_labels(objects: SceneObjects, velodyne_to_street: np.ndarray, velo_to_rect: np.ndarray,
                 projection: np.ndarray, image_hw: tuple[int, int], lidar_instance: np.ndarray,
                 camera: CameraObjects) -> KittiLabels:
    """The ``label_2`` objects of one frame's front camera.

    An object of a mapped type (``KITTI_TYPES_BY_CATEGORY``) gets a line when its projected box overlaps the image
    and the camera or the lidar sees some of it: a labelled line when the lidar has returns from it, a DontCare
    region (its 2D box) when only the camera sees it (too far or hidden from the lidar, as KITTI marks regions it
    did not label). ``truncated`` is the part of the projected box outside the image, ``occluded`` the level of
    its visible fraction (``KITTI_OCCLUSION_EDGES``).

    Parameters
    ----------
    objects : the scene's objects.
    velodyne_to_street : (4, 4) pose of the KITTI velodyne frame (x forward, y left, z up) at the frame.
    velo_to_rect : (4, 4) velodyne -> rectified camera (``R0_rect @ Tr_velo_to_cam``).
    projection : (3, 4) ``P2``.
    image_hw : (height, width).
    lidar_instance : (N,) instance id of each lidar point.
    camera : what the front camera sees of the objects.
    """
    names = objects.category_names
    kitti_type = np.array([KITTI_TYPES_BY_CATEGORY.get(name, "") for name in names], dtype=object)
    points = _count_by_object(lidar_instance, objects)
    boxes = transform_boxes(objects.boxes, np.linalg.inv(velodyne_to_street))
    location, dimensions, rotation_y = lidar_to_kitti_camera(boxes, velo_to_rect)
    image = project_boxes_to_image(kitti_camera_corners(location, dimensions, rotation_y), projection, image_hw)
    candidate = (kitti_type != "") & image.valid & ((points > 0) | (camera.visible > 0))
    labelled = np.flatnonzero(candidate & (points > 0))
    unlabelled = np.flatnonzero(candidate & (points == 0))
    labelled = labelled[np.argsort(location[labelled, 2], kind="stable")]  # nearest first; DontCare after
    fraction = visible_fraction(camera.visible[labelled], camera.silhouette[labelled])
    occluded = 2 - np.searchsorted(KITTI_OCCLUSION_EDGES, fraction, side="right")
    objects_part = KittiLabels(
        type=[str(kitti_type[k]) for k in labelled], truncated=image.truncation[labelled],
        occluded=occluded.astype(np.int64), alpha=observation_angle(location[labelled], rotation_y[labelled]),
        bbox=image.clipped[labelled], dimensions=dimensions[labelled], location=location[labelled],
        rotation_y=rotation_y[labelled])
    return KittiLabels.concatenate([objects_part, KittiLabels.dont_care(image.clipped[unlabelled])])
