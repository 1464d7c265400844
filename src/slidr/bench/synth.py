"""``slidr bench synth``: ray-casting speed, seconds per keyframe, and the projected time of the default world."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from slidr.bench import DEVICE_FLAG, DeviceSetting, cpu_only_notes
from slidr.cli.settings import CommandSettings, Flag, parse_size
from slidr.config import ConfigError, at_least, setting, subkey

NAME = "synth"
HELP = "synthetic world: rays per second, seconds per keyframe, projected time of the default world"


@dataclass(frozen=True)
class SynthBenchConfig(DeviceSetting):
    """``slidr bench synth``: image size, repetitions, and whether the whole default world is generated."""

    image_size: list[int] = setting(factory=lambda: [800, 450], help="camera image size (width, height)")
    repeats: int = setting(3, help="timed repetitions (median)")
    full: bool = setting(False, help="also generate the whole default world (10 scenes x 10 keyframes) and time it")
    workers: Optional[int] = setting(None, help="processes for --full (default: one per core)")

    def validate(self, where: str) -> None:
        at_least(self.repeats, 1, subkey(where, "repeats"))
        if self.workers is not None:
            at_least(self.workers, 1, subkey(where, "workers"))
        if len(self.image_size) != 2 or min(self.image_size) < 16:
            key = subkey(where, "image_size")
            raise ConfigError(f"{key} must be [width, height], each >= 16, got {self.image_size}", key=key)


SETTINGS = CommandSettings(SynthBenchConfig, flags=[
    Flag("image_size", metavar="WxH", parse=parse_size, help="camera image size (default 800x450)"),
    Flag("repeats"), Flag("full"), Flag("workers"), DEVICE_FLAG])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)


def run(args: argparse.Namespace):
    import numba

    from slidr.bench import BenchResult, time_call
    from slidr.data.synth import generate_world
    from slidr.data.synth.generate import CAMERA_RANGE_M, SynthSettings, _camera_rays_cached, render_frame, scene_world
    from slidr.data.synth.raycast import cast_rays
    from slidr.data.synth.sensors import build_rig, ego_pose, lidar_rays
    from slidr.data.synth.world import plan_scenes

    cfg: SynthBenchConfig = args.settings
    image_size = (cfg.image_size[0], cfg.image_size[1])
    settings = SynthSettings(image_size=image_size)
    conditions = plan_scenes(settings.scenes, settings.seed)[0]
    world = scene_world(conditions, settings.frames)
    rig = build_rig(image_size)
    ego_to_street, _ = ego_pose(world, conditions, 0)
    sensor_rays = []
    directions, _ = lidar_rays(settings.lidar)
    lidar_to_street = ego_to_street @ rig[0].to_ego
    sensor_rays.append((lidar_to_street[:3, 3], directions @ lidar_to_street[:3, :3].T, settings.lidar.max_range))
    for camera in rig[1:]:
        to_street = ego_to_street @ camera.to_ego
        sensor_rays.append((to_street[:3, 3], _camera_rays_cached(camera) @ to_street[:3, :3].T, CAMERA_RANGE_M))
    ray_count = sum(len(d) for _, d, _ in sensor_rays)

    def cast_all():
        for origin, dirs, t_max in sensor_rays:
            cast_rays(origin, dirs, t_max, world.kinds, world.params, world.grid)

    start = time.perf_counter()
    cast_all()  # compiles on a cold numba cache
    first_call = time.perf_counter() - start
    cast_seconds = time_call(cast_all, repeats=cfg.repeats, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        frame_seconds = time_call(lambda: render_frame(Path(tmp), settings, conditions, 0), repeats=cfg.repeats,
                                  device="cpu")
    threads = numba.get_num_threads()
    cores = os.cpu_count() or 1
    # frames are spread over processes of one thread each: about `cores` frames at a time, each one
    # taking about `threads` times the in-process (multi-threaded) time
    projected = frame_seconds * threads * settings.scenes * settings.frames / max(1, cores)
    rows = [
        {"measure": "rays per frame (lidar + 6 cameras)", "value": ray_count},
        {"measure": "ray casting, M rays/s", "value": round(ray_count / cast_seconds / 1e6, 2)},
        {"measure": "seconds per keyframe (cast, shade, write)", "value": round(frame_seconds, 3)},
        {"measure": "first call incl. compile/cache load, s", "value": round(first_call, 2)},
        {"measure": "projected default world (10x10), s", "value": round(projected, 1)},
    ]
    data = {"image_size": list(image_size), "rays_per_frame": ray_count, "rays_per_second": ray_count / cast_seconds,
            "cast_seconds_per_frame": cast_seconds, "seconds_per_frame": frame_seconds, "numba_threads": threads,
            "cpu_count": cores, "first_call_seconds": first_call, "projected_default_world_seconds": projected,
            "primitives": int(len(world.kinds)), "device": "cpu"}
    notes = ["timings on a shared machine are noisy; ratios measured in one run are more reliable"]
    notes += cpu_only_notes(cfg.device, "the synthetic world is ray-cast by numba kernels on the CPU")
    if cfg.full:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = generate_world(Path(tmp) / "world", workers=cfg.workers, image_size=image_size,
                                     show_progress=False)
            full = time.perf_counter() - start
        rows.append({"measure": "default world generated, s", "value": round(full, 1)})
        data["default_world_seconds"] = full
        data["default_world_summary"] = summary
    return BenchResult(rows=rows, data=data, notes=notes)
