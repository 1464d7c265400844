"""Write frames and tables in the nuScenes on-disk layout that the official devkit loads.

Layout under the dataroot: ``<version>/*.json`` (the 13 devkit tables and ``lidarseg.json``),
``samples/LIDAR_TOP/*.pcd.bin`` (float32 x 5: x, y, z, intensity, ring), ``samples/CAM_*/*.jpg``,
``lidarseg/<version>/<lidar sample_data token>_lidarseg.bin`` (uint8 raw category per point), ``maps/*.png``
(one stub mask per location), the objects' boxes as ``instance`` / ``sample_annotation`` rows
(:mod:`slidr.data.synth.annotate`) and, outside the devkit's tables, ``semantic/CAM_*/<image stem>.png``: the raw
nuScenes category index of every pixel (0 = ``noise``, used for the sky).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from slidr.data.classes import NUSCENES_CATEGORIES
from slidr.data.synth.sensors import LIDAR_CHANNEL, Sensor
from slidr.data.synth.world import LOCATIONS, SceneConditions

JPEG_QUALITY = 92

_ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
               "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving")
_VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))


def token(*parts: Any) -> str:
    """A deterministic 32-hex-digit token (nuScenes style) from any printable parts."""
    return hashlib.md5("/".join(str(part) for part in parts).encode()).hexdigest()


def sample_data_token(seed: int, scene: int, frame: int, channel: str) -> str:
    return token("sample_data", seed, scene, frame, channel)


def sample_token(seed: int, scene: int, frame: int) -> str:
    return token("sample", seed, scene, frame)


def frame_files(conditions: SceneConditions, channels: list[str], timestamp: int) -> dict[str, str]:
    """Relative file name of each channel's sample_data at ``timestamp``, as nuScenes names them."""
    out = {}
    for channel in channels:
        suffix = "pcd.bin" if channel == LIDAR_CHANNEL else "jpg"
        out[channel] = f"samples/{channel}/{conditions.logfile}__{channel}__{timestamp}.{suffix}"
    return out


def semantic_file(image_file: str) -> str:
    """``samples/CAM_X/<stem>.jpg`` -> ``semantic/CAM_X/<stem>.png``."""
    _, channel, name = image_file.split("/")
    return f"semantic/{channel}/{name[:-len('.jpg')]}.png"


def lidarseg_file(version: str, lidar_token: str) -> str:
    return f"lidarseg/{version}/{lidar_token}_lidarseg.bin"


def write_lidar(path: Path, points: np.ndarray, labels: np.ndarray, label_path: Path) -> None:
    """``points`` (N, 5) x, y, z, intensity, ring -> float32 ``.pcd.bin``; ``labels`` (N,) -> uint8 ``.bin``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(points, dtype=np.float32).tofile(path)
    np.ascontiguousarray(labels, dtype=np.uint8).tofile(label_path)


def write_camera(path: Path, image: np.ndarray, semantic_path: Path, semantic: np.ndarray) -> None:
    """(H, W, 3) uint8 image -> JPEG; (H, W) uint8 raw categories -> PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    semantic_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=JPEG_QUALITY)
    Image.fromarray(semantic).save(semantic_path, compress_level=1)


def write_tables(root: Path, version: str, seed: int, scenes: list[SceneConditions], frames: list[dict],
                 rig: list[Sensor]) -> None:
    """Write the devkit's tables and ``lidarseg.json`` for all frames.

    Parameters
    ----------
    root : dataroot.
    version : e.g. "v1.0-trainval" (the tables' folder).
    seed : the world's seed (tokens derive from it).
    scenes : the scenes' conditions, in order.
    frames : one record per keyframe from the frame renderer, with ``scene``, ``frame``, ``timestamp``,
        ``ego_rotation``, ``ego_translation``, ``files`` (channel -> relative path), ``points`` and
        ``annotations`` (:func:`slidr.data.synth.annotate.nuscenes_annotations`: one ``sample_annotation`` per
        object near the ego; an object's annotations across the scene's keyframes form one ``instance``).
    rig : the sensors (lidar first).
    """
    table_dir = root / version
    table_dir.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[dict]] = {name: [] for name in (
        "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
        "scene", "sample", "sample_data", "sample_annotation", "map", "lidarseg")}
    for index, name in enumerate(NUSCENES_CATEGORIES):
        tables["category"].append({"token": token("category", name), "name": name, "description": name,
                                   "index": index})
    tables["attribute"] = [{"token": token("attribute", name), "name": name, "description": name}
                           for name in _ATTRIBUTES]
    tables["visibility"] = [{"token": tok, "level": level, "description": f"visibility of whole object is {level}"}
                            for tok, level in _VISIBILITY]
    for sensor in rig:
        tables["sensor"].append({"token": token("sensor", sensor.channel), "channel": sensor.channel,
                                 "modality": "lidar" if sensor.intrinsic is None else "camera"})
    by_scene: dict[int, list[dict]] = {}
    for record in sorted(frames, key=lambda r: (r["scene"], r["frame"])):
        by_scene.setdefault(record["scene"], []).append(record)
    log_tokens_by_location: dict[str, list[str]] = {}
    for conditions in scenes:
        log_token = token("log", seed, conditions.index)
        log_tokens_by_location.setdefault(conditions.location, []).append(log_token)
        tables["log"].append({"token": log_token, "logfile": conditions.logfile, "vehicle": conditions.vehicle,
                              "date_captured": conditions.date_captured, "location": conditions.location})
        calibrated = {}
        for sensor in rig:
            calibrated[sensor.channel] = token("calibrated_sensor", seed, conditions.index, sensor.channel)
            tables["calibrated_sensor"].append({
                "token": calibrated[sensor.channel], "sensor_token": token("sensor", sensor.channel),
                "translation": list(sensor.translation), "rotation": list(sensor.rotation),
                "camera_intrinsic": [] if sensor.intrinsic is None else sensor.intrinsic.tolist()})
        records = by_scene[conditions.index]
        samples = [sample_token(seed, conditions.index, r["frame"]) for r in records]
        tables["scene"].append({
            "token": token("scene", seed, conditions.index), "log_token": log_token, "nbr_samples": len(records),
            "first_sample_token": samples[0], "last_sample_token": samples[-1], "name": conditions.name,
            "description": conditions.description})
        for k, record in enumerate(records):
            tables["sample"].append({
                "token": samples[k], "timestamp": record["timestamp"], "prev": samples[k - 1] if k else "",
                "next": samples[k + 1] if k + 1 < len(records) else "",
                "scene_token": token("scene", seed, conditions.index)})
        _annotations(tables, seed, conditions.index, records, samples)
        for sensor in rig:
            sd_tokens = [sample_data_token(seed, conditions.index, r["frame"], sensor.channel) for r in records]
            for k, record in enumerate(records):
                sd = sd_tokens[k]
                tables["ego_pose"].append({"token": sd, "timestamp": record["timestamp"],
                                           "rotation": record["ego_rotation"],
                                           "translation": record["ego_translation"]})
                tables["sample_data"].append({
                    "token": sd, "sample_token": samples[k], "ego_pose_token": sd,
                    "calibrated_sensor_token": calibrated[sensor.channel], "timestamp": record["timestamp"],
                    "fileformat": "pcd" if sensor.intrinsic is None else "jpg", "is_key_frame": True,
                    "height": sensor.height, "width": sensor.width, "filename": record["files"][sensor.channel],
                    "prev": sd_tokens[k - 1] if k else "", "next": sd_tokens[k + 1] if k + 1 < len(records) else ""})
                if sensor.intrinsic is None:
                    tables["lidarseg"].append({"token": sd, "sample_data_token": sd,
                                               "filename": lidarseg_file(version, sd)})
    maps = root / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    for location in LOCATIONS:
        if location not in log_tokens_by_location:
            continue
        map_token = token("map", seed, location)
        Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(maps / f"{map_token}.png")
        tables["map"].append({"token": map_token, "log_tokens": log_tokens_by_location[location],
                              "category": "semantic_prior", "filename": f"maps/{map_token}.png"})
    for name, rows in tables.items():
        (table_dir / f"{name}.json").write_text(json.dumps(rows, indent=0))


def _annotations(tables: dict[str, list[dict]], seed: int, scene: int, records: list[dict],
                 samples: list[str]) -> None:
    """Append one scene's ``instance`` and ``sample_annotation`` rows (annotations of an instance chained in time)."""
    tracks: dict[int, list[tuple[int, dict]]] = {}
    for k, record in enumerate(records):
        for annotation in record.get("annotations", ()):
            tracks.setdefault(annotation["instance"], []).append((k, annotation))
    for instance in sorted(tracks):
        track = tracks[instance]
        instance_token = token("instance", seed, scene, instance)
        ann_tokens = [token("sample_annotation", seed, scene, records[k]["frame"], instance) for k, _ in track]
        tables["instance"].append({
            "token": instance_token, "category_token": token("category", track[0][1]["category"]),
            "nbr_annotations": len(track), "first_annotation_token": ann_tokens[0],
            "last_annotation_token": ann_tokens[-1]})
        for position, (k, annotation) in enumerate(track):
            tables["sample_annotation"].append({
                "token": ann_tokens[position], "sample_token": samples[k], "instance_token": instance_token,
                "visibility_token": annotation["visibility"],
                "attribute_tokens": [token("attribute", name) for name in annotation["attributes"]],
                "translation": annotation["translation"], "size": annotation["size"],
                "rotation": annotation["rotation"],
                "prev": ann_tokens[position - 1] if position else "",
                "next": ann_tokens[position + 1] if position + 1 < len(track) else "",
                "num_lidar_pts": annotation["num_lidar_pts"], "num_radar_pts": 0})
