"""Generate a synthetic world on disk: scenes of keyframes rendered in parallel, written atomically.

Every frame depends only on ``(seed, scene, frame)``, so the output is the same for any number of workers.

A world is written into a temporary folder beside ``out`` and moved there at the end, so a failure never leaves
a world that looks complete. Its manifest (``synth_manifest.json``) lists every file the generator wrote;
regenerating over an existing world (``overwrite``) replaces exactly those files and never touches anything
else there (an index, superpixels, runs, notes the user put in the folder).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence, cast

import numpy as np

from slidr.config import NUSCENES_CAMERAS
from slidr.data.classes import NUSCENES_CLASSES, NUSCENES_LEARNING_MAP
from slidr.data.io import SYNTH_SUMMARY_FILE as SUMMARY_FILE
from slidr.data.projection import project_points
from slidr.data.synth import annotate, kitti_object_writer, kitti_writer, nuscenes_writer
from slidr.data.synth.raycast import cast_rays
from slidr.data.synth.render import lidar_returns, render_image
from slidr.data.synth.sensors import (
    LIDAR_CHANNEL,
    LidarSpec,
    Sensor,
    build_rig,
    camera_rays,
    ego_pose,
    lidar_rays,
    matrix_to_quaternion,
)
from slidr.data.synth.world import KITTI_OUTLIER, SceneConditions, World, build_world, plan_scenes
from slidr.errors import SlidrError, UsageError
from slidr.utils.io import write_error, write_json
from slidr.utils.log import logger
from slidr.utils.progress import progress

MANIFEST_FILE = "synth_manifest.json"
FORMATS = ("nuscenes", "semantickitti", "kitti-object")
MIN_IMAGE_SIDE = 64
CAMERA_RANGE_M = 250.0


@dataclass(frozen=True)
class SynthSettings:
    """What to generate (``slidr synth`` options)."""

    scenes: int = 10
    frames: int = 10
    image_size: tuple[int, int] = (800, 450)  # (width, height)
    seed: int = 0
    fmt: str = "nuscenes"
    version: str = "v1.0-trainval"
    lidar: LidarSpec = field(default_factory=LidarSpec)

    def validate(self) -> None:
        if self.scenes < 1:
            raise SlidrError(f"--scenes must be a positive count, got {self.scenes}")
        if self.frames < 1:
            raise SlidrError(f"--frames must be a positive count, got {self.frames}")
        if len(self.image_size) != 2 or min(self.image_size) < MIN_IMAGE_SIDE:
            raise SlidrError(f"--image-size must be WIDTHxHEIGHT with both sides >= {MIN_IMAGE_SIDE} px, "
                             f"got {'x'.join(map(str, self.image_size))}")
        if self.fmt not in FORMATS:
            raise SlidrError(f"--format must be one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if self.seed < 0:
            raise SlidrError(f"--seed must be >= 0, got {self.seed}")
        if not self.version or "/" in self.version:
            raise SlidrError(f"--version must be a folder name like v1.0-trainval, got {self.version!r}")

    @property
    def channels(self) -> list[str]:
        cameras = list(NUSCENES_CAMERAS) if self.fmt == "nuscenes" else ["CAM_FRONT"]
        return [LIDAR_CHANNEL] + cameras


def generate_world(out: str | Path, scenes: int = 10, frames: int = 10, image_size: Sequence[int] = (800, 450),
                   seed: int = 0, workers: int | None = None, fmt: str = "nuscenes",
                   version: str = "v1.0-trainval", show_progress: bool = True, previews: bool = True,
                   overwrite: bool = False) -> dict:
    """Generate a synthetic driving world at ``out`` and return its summary.

    Parameters
    ----------
    out : folder to create (absent or empty), or, with ``overwrite``, a folder holding a world of ``slidr synth``.
    scenes, frames : number of scenes and keyframes (2 Hz) per scene.
    image_size : (width, height) of the camera images.
    seed : everything random derives from it.
    workers : processes; default ``min(os.cpu_count(), scenes * frames)``. 1 renders in this process.
    fmt : "nuscenes", "semantickitti" or "kitti-object" (KITTI 3D object layout, front camera, label_2 boxes).
    version : nuScenes table folder name.
    show_progress : show a progress bar.
    previews : write ``preview/bev.png`` and ``preview/camera_depth.png``.
    overwrite : replace the world at ``out``: only the files listed in its manifest are removed or replaced;
        other files there are kept (a warning names them: an index or superpixels of the previous world no
        longer describe the new one).

    Returns
    -------
    dict, also written to ``out/synth_summary.json``: ``scenes``, ``samples``, ``points_per_scan`` (mean),
    ``class_points`` (nuScenes evaluation class -> point count), ``pairs_per_camera`` (mean points projected
    into one camera image), ``objects`` (annotated boxes per nuScenes category, or label lines per KITTI type),
    and more.

    Raises
    ------
    SlidrError
        ``out`` is not empty and ``overwrite`` is not set; with ``overwrite``, ``out`` holds no manifest of a
        world (nothing there is known to be slidr's), or a file of the user's lies where the new world writes one;
        a file cannot be written (named).
    """
    width_height = cast(tuple[int, int], tuple(int(v) for v in image_size))
    settings = SynthSettings(scenes=int(scenes), frames=int(frames), image_size=width_height,
                             seed=int(seed), fmt=fmt, version=version)
    settings.validate()
    workers = min(os.cpu_count() or 1, settings.scenes * settings.frames) if workers is None else int(workers)
    if workers < 1:
        raise SlidrError(f"--workers must be a positive count, got {workers}")
    out, previous = _check_output(Path(out), overwrite)
    start = time.perf_counter()
    conditions = plan_scenes(settings.scenes, settings.seed)
    tasks = [(settings, scene, frame) for scene in conditions for frame in range(settings.frames)]
    try:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    except OSError as error:
        raise write_error(out, error, "synthetic world") from None
    try:
        # the world is written into tmp, then published onto out
        records = _run_tasks(tmp, tasks, workers, show_progress)
        rig = build_rig(settings.image_size)
        if settings.fmt == "nuscenes":
            nuscenes_writer.write_tables(tmp, settings.version, settings.seed, conditions, records, rig)
        elif settings.fmt == "kitti-object":
            kitti_object_writer.write_image_sets(tmp, settings.version, conditions, settings.frames)
        else:
            camera = next(s for s in rig if s.channel == "CAM_FRONT")
            for scene in conditions:
                own = sorted((r for r in records if r["scene"] == scene.index), key=lambda r: r["frame"])
                kitti_writer.write_sequence_files(tmp, scene.index, camera, [r["ego_to_global"] for r in own],
                                                  [r["timestamp"] for r in own])
        summary = _summary(settings, conditions, records, time.perf_counter() - start)
        if previews:
            from slidr.data.synth.preview import write_previews

            write_previews(tmp / "preview", next(r["preview"] for r in records if r.get("preview")))
        write_json(tmp / SUMMARY_FILE, summary)
        files = sorted(path.relative_to(tmp).as_posix() for path in tmp.rglob("*") if path.is_file())
        write_json(tmp / MANIFEST_FILE, {"generator": "slidr synth", "files": files})
        _publish(tmp, out, previous)
    except OSError as error:
        raise SlidrError(f"cannot write the synthetic world to {out}: {error}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def read_manifest(world: Path) -> list[str] | None:
    """The files a world's generator wrote (relative paths), from its manifest; None without a manifest."""
    path = world / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        files = [str(name) for name in data["files"]]
    except (ValueError, KeyError, TypeError):
        raise SlidrError(f"{path} is damaged: slidr cannot tell the world's files from yours; remove the world "
                         "yourself or choose another --out") from None
    for name in files:  # a manifest must only name files inside the world
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise SlidrError(f"{path} names {name!r}, outside the world; it was not written by slidr synth")
    return files


def _publish(tmp: Path, out: Path, previous: list[str] | None) -> None:
    """Move the world written in ``tmp`` onto ``out``: a rename when ``out`` is absent or empty, else (a previous
    world whose files are ``previous``) file by file, removing only the previous world's files."""
    if previous is None:
        if out.is_dir():
            out.rmdir()  # empty (checked before generating)
        os.replace(tmp, out)
        return
    new = sorted(path.relative_to(tmp).as_posix() for path in tmp.rglob("*") if path.is_file())
    owned = set(previous) | {MANIFEST_FILE}
    taken = [name for name in new if name not in owned and (out / name).exists()]
    if taken:
        raise SlidrError(f"{out}: the new world would replace files that slidr synth did not write: "
                         f"{', '.join(taken[:5])}{' ...' if len(taken) > 5 else ''}; move them away first")
    # the manifest lists both worlds' files until the move is done: an interruption leaves nothing unlisted
    write_json(out / MANIFEST_FILE, {"generator": "slidr synth", "files": sorted(set(previous) | set(new))})
    for name in new:
        if name == MANIFEST_FILE:
            continue
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / name, target)
    kept_new = set(new)
    for name in previous:
        if name not in kept_new:
            (out / name).unlink(missing_ok=True)
            _remove_empty_parents(out / name, out)
    os.replace(tmp / MANIFEST_FILE, out / MANIFEST_FILE)
    others = sorted({Path(path.relative_to(out).parts[0]).as_posix() for path in out.rglob("*")
                     if path.is_file() and path.relative_to(out).as_posix() not in kept_new})
    if others:
        logger.warning("warning: %s: kept what slidr synth did not write there (%s); an index or superpixels of "
                       "the previous world do not describe the new one: run slidr prepare and slidr superpixels "
                       "again", out, ", ".join(others[:6]) + (" ..." if len(others) > 6 else ""))


def _remove_empty_parents(path: Path, root: Path) -> None:
    folder = path.parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only when empty: a folder holding a file of the user's stays
        except OSError:
            return
        folder = folder.parent


def _check_output(out: Path, overwrite: bool) -> tuple[Path, list[str] | None]:
    """Refuse outputs that would destroy anything but a previous synthetic world's own files; returns the output
    folder and, when a world there is to be replaced, its manifest's files."""
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise SlidrError(f"output {out} exists and is not a folder")
    previous = None
    if out.is_dir() and any(out.iterdir()):
        is_world = (out / MANIFEST_FILE).is_file() or (out / SUMMARY_FILE).is_file()
        if not is_world:
            raise UsageError(f"output folder {out} is not empty and holds no synthetic world; choose a new --out "
                             "or empty it")
        if not overwrite:
            raise UsageError(f"output folder {out} already holds a synthetic world; pass --overwrite to replace it "
                             f"(only the files slidr synth wrote, listed in its {MANIFEST_FILE}, are replaced; "
                             "anything else there is kept), or choose a new --out")
        previous = read_manifest(out)
        if previous is None:
            raise SlidrError(f"{out} holds a world written by an earlier slidr, without a {MANIFEST_FILE} listing "
                             "its files: slidr cannot tell them from yours, so it replaces nothing there; remove "
                             "that world yourself or choose a new --out")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SlidrError(f"cannot create the output folder's parent {parent}: {error.strerror or error}") from None
    if not os.access(parent, os.W_OK):
        raise SlidrError(f"output folder {parent} is not writable")
    return out, previous


def _run_tasks(root: Path, tasks: list, workers: int, show_progress: bool) -> list[dict]:
    bar = progress(total=len(tasks), desc="synth", unit="frame", disable=not show_progress)
    records = []
    try:
        if workers == 1:
            for task in tasks:
                records.append(render_frame(root, *task))
                bar.update()
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                        initargs=(threads,)) as pool:
                futures = [pool.submit(render_frame, root, *task) for task in tasks]
                try:
                    for future in concurrent.futures.as_completed(futures):
                        records.append(future.result())
                        bar.update()
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()
    return sorted(records, key=lambda r: (r["scene"], r["frame"]))


def _init_worker(threads: int) -> None:
    import numba

    numba.set_num_threads(threads)


@lru_cache(maxsize=1)
def scene_world(conditions: SceneConditions, frames: int) -> World:
    """The world of one scene (cached: consecutive frames of a scene share it)."""
    return build_world(conditions, frames)


@lru_cache(maxsize=1)
def scene_objects(conditions: SceneConditions, frames: int) -> annotate.SceneObjects:
    """The annotated objects of one scene (cached like :func:`scene_world`)."""
    return annotate.scene_objects(scene_world(conditions, frames))


_CAMERA_RAYS: dict[tuple, np.ndarray] = {}


def _camera_rays_cached(sensor: Sensor) -> np.ndarray:
    key = (sensor.channel, sensor.width, sensor.height)
    if key not in _CAMERA_RAYS:
        _CAMERA_RAYS[key] = camera_rays(sensor.camera_matrix, sensor.width, sensor.height)
    return _CAMERA_RAYS[key]


def render_frame(root: Path, settings: SynthSettings, conditions: SceneConditions, frame: int) -> dict:
    """Render and write one keyframe: the lidar scan, its labels, the camera images and the objects' boxes.

    Returns a record for the tables and the summary: ``scene``, ``frame``, ``timestamp``, the ego pose,
    ``files``, ``points``, ``class_counts`` (32 raw categories), ``pairs`` (channel -> projected points),
    ``annotations`` (nuScenes layout: :func:`slidr.data.synth.annotate.nuscenes_annotations`) and ``objects``
    (annotated objects per nuScenes category name).
    """
    world = scene_world(conditions, settings.frames)
    objects = scene_objects(conditions, settings.frames)
    rig = [s for s in build_rig(settings.image_size) if s.channel in settings.channels]
    ego_to_street, ego_to_global = ego_pose(world, conditions, frame)
    timestamp = conditions.start_timestamp + int(frame * 500_000)
    rng = np.random.default_rng([settings.seed, conditions.index, frame])
    lidar_to_street = ego_to_street @ rig[0].to_ego
    scan = lidar_scan(world, conditions, settings.lidar, lidar_to_street, rng)
    record: dict[str, Any] = {
        "scene": conditions.index, "frame": frame, "timestamp": timestamp,
        "ego_rotation": list(matrix_to_quaternion(ego_to_global[:3, :3])),
        "ego_translation": ego_to_global[:3, 3].tolist(), "ego_to_global": ego_to_global,
        "points": int(len(scan["points"])),
        "class_counts": np.bincount(scan["category"], minlength=32).tolist(), "pairs": {},
    }
    files = nuscenes_writer.frame_files(conditions, [s.channel for s in rig], timestamp)
    record["files"] = files
    lidar_to_ego = rig[0].to_ego
    images = {}
    seen: dict[str, annotate.CameraObjects] = {}
    for camera in rig[1:]:
        camera_to_street = ego_to_street @ camera.to_ego
        image, semantic, instance = render_camera(world, conditions, camera, camera_to_street, rng)
        lidar_to_camera = np.linalg.inv(camera.to_ego) @ lidar_to_ego
        index, _ = project_points(scan["points"], lidar_to_camera, camera.camera_matrix, (camera.height, camera.width))
        record["pairs"][camera.channel] = int(len(index))
        images[camera.channel] = (image, semantic)
        if settings.fmt != "semantickitti":  # the SemanticKITTI layout has no boxes
            seen[camera.channel] = annotate.camera_objects(world, objects, camera, camera_to_street,
                                                           _camera_rays_cached(camera), instance, CAMERA_RANGE_M)
    if settings.fmt == "nuscenes":
        lidar_token = nuscenes_writer.sample_data_token(settings.seed, conditions.index, frame, LIDAR_CHANNEL)
        nuscenes_writer.write_lidar(root / files[LIDAR_CHANNEL], scan["points"], scan["category"],
                                    root / nuscenes_writer.lidarseg_file(settings.version, lidar_token))
        for channel, (image, semantic) in images.items():
            nuscenes_writer.write_camera(root / files[channel], image,
                                         root / nuscenes_writer.semantic_file(files[channel]), semantic)
        record["annotations"] = annotate.nuscenes_annotations(world, objects, lidar_to_street, scan["instance"],
                                                              list(seen.values()), settings.lidar.max_range)
        record["objects"] = dict(Counter(a["category"] for a in record["annotations"]))
    else:
        velodyne = np.empty((len(scan["points"]), 4), dtype=np.float32)
        velodyne[:, :3] = scan["points"][:, :3] @ lidar_to_ego[:3, :3].T  # KITTI axes, same origin
        velodyne[:, 3] = scan["points"][:, 3] / 255.0
        if settings.fmt == "semantickitti":
            labels = scan["part"].astype(np.uint32) | (scan["instance"].astype(np.uint32) << 16)
            kitti_writer.write_frame(root, conditions.index, frame, velodyne, labels, images["CAM_FRONT"][0])
        else:
            front = next(s for s in rig if s.channel == "CAM_FRONT")
            calibration = kitti_object_writer.calibration(front)
            boxes = annotate.kitti_labels(
                objects, ego_to_street @ kitti_writer.velodyne_to_ego(),
                kitti_object_writer.velo_to_rect(calibration), calibration["P2"], (front.height, front.width),
                scan["instance"], seen[front.channel])
            kitti_object_writer.write_frame(root, kitti_object_writer.frame_id(conditions.index, frame,
                                                                               settings.frames),
                                            velodyne, images[front.channel][0], calibration, boxes)
            record["objects"] = dict(Counter(boxes.type))
    if conditions.index == 0 and frame == 0:
        front = next(s for s in rig if s.channel == "CAM_FRONT")
        record["preview"] = {"points": scan["points"], "category": scan["category"],
                             "image": images["CAM_FRONT"][0],
                             "lidar_to_camera": np.linalg.inv(front.to_ego) @ lidar_to_ego,
                             "intrinsic": front.intrinsic}
    return record


def lidar_scan(world: World, conditions: SceneConditions, spec: LidarSpec, lidar_to_street: np.ndarray,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One lidar sweep: ``points`` (N, 5) x, y, z, intensity, ring in the lidar frame; per point ``category``
    (uint8 nuScenes raw index), ``part`` (SemanticKITTI raw id), ``instance``; in rain, a few spurious returns
    from drops near the sensor are added with the ``noise`` category."""
    directions, ring = lidar_rays(spec)
    street_dirs = directions @ lidar_to_street[:3, :3].T
    distance, prim, normals = cast_rays(lidar_to_street[:3, 3], street_dirs, spec.max_range, world.kinds,
                                        world.params, world.grid)
    keep, measured, intensity = lidar_returns(distance, prim, normals, street_dirs, world, conditions, spec, rng)
    hit = prim[keep]
    points = np.empty((int(keep.sum()), 5), dtype=np.float32)
    points[:, :3] = directions[keep] * measured[keep, None]
    points[:, 3] = intensity[keep]
    points[:, 4] = ring[keep]
    category = world.category[hit]
    part = world.part[hit]
    instance = world.instance[hit]
    if conditions.rain:
        drops = int(rng.integers(40, 160))
        pick = rng.integers(0, len(directions), drops)
        spurious = np.empty((drops, 5), dtype=np.float32)
        spurious[:, :3] = directions[pick] * rng.uniform(1.5, 6.0, (drops, 1))
        spurious[:, 3] = rng.uniform(0, 8, drops).round()
        spurious[:, 4] = ring[pick]
        points = np.concatenate([points, spurious])
        category = np.concatenate([category, np.zeros(drops, dtype=np.uint8)])
        part = np.concatenate([part, np.full(drops, KITTI_OUTLIER, dtype=np.uint16)])
        instance = np.concatenate([instance, np.zeros(drops, dtype=np.int32)])
    return {"points": points, "category": category, "part": part, "instance": instance}


def render_camera(world: World, conditions: SceneConditions, camera: Sensor, camera_to_street: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The camera's (H, W, 3) uint8 image, (H, W) uint8 map of raw nuScenes categories (0 = sky) and (H, W) int32
    map of the object instance seen at each pixel (0 = stuff or sky)."""
    directions = _camera_rays_cached(camera) @ camera_to_street[:3, :3].T
    origin = camera_to_street[:3, 3]
    distance, prim, normals = cast_rays(origin, directions, CAMERA_RANGE_M, world.kinds, world.params, world.grid)
    shape = (camera.height, camera.width)
    image = render_image(origin, directions, distance, prim, normals, world, conditions, shape, rng)
    semantic = np.where(prim >= 0, world.category[np.maximum(prim, 0)], 0).astype(np.uint8).reshape(shape)
    instance = np.where(prim >= 0, world.instance[np.maximum(prim, 0)], 0).astype(np.int32).reshape(shape)
    return image, semantic, instance


def _summary(settings: SynthSettings, conditions: list[SceneConditions], records: list[dict],
             seconds: float) -> dict:
    counts = np.sum([r["class_counts"] for r in records], axis=0)
    class_points = {name: 0 for name in NUSCENES_CLASSES}
    for raw, count in enumerate(counts):
        evaluation = int(NUSCENES_LEARNING_MAP[raw])
        if evaluation:
            class_points[NUSCENES_CLASSES[evaluation - 1]] += int(count)
    pairs = {channel: float(np.mean([r["pairs"][channel] for r in records])) for channel in records[0]["pairs"]}
    return {
        "format": settings.fmt,
        "version": settings.version if settings.fmt == "nuscenes" else None,
        "seed": settings.seed,
        "scenes": settings.scenes,
        "frames_per_scene": settings.frames,
        "samples": len(records),
        "image_size": list(settings.image_size),
        "cameras": list(pairs),
        "points_per_scan": float(np.mean([r["points"] for r in records])),
        "class_points": class_points,
        "ignored_points": int(counts.sum() - sum(class_points.values())),
        "pairs_per_camera": float(np.mean(list(pairs.values()))),
        "pairs_per_camera_by_channel": pairs,
        "objects": dict(sorted(sum((Counter(r.get("objects", {})) for r in records), Counter()).items())),
        "conditions": {
            "rain": sum(c.rain for c in conditions), "night": sum(c.night for c in conditions),
            "boston": sum(c.city == "boston" for c in conditions),
            "singapore": sum(c.city == "singapore" for c in conditions),
        },
        "seconds": round(seconds, 2),
        "seconds_per_frame": round(seconds / max(1, len(records)), 4),
    }


def default_world_estimate(seconds_per_frame: float, workers: int, scenes: int = 10, frames: int = 10) -> float:
    """Projected wall time of a world from one process's seconds per frame (frames spread over workers)."""
    return seconds_per_frame * math.ceil(scenes * frames / max(1, workers))
