"""``slidr bench detector``: forward+backward time of the BEV detector per scan, for several backbones side by side.

For each backbone: the 3D backbone alone (forward to its features, backward from their sum), the head alone
(BEV pooling, neck, CenterPoint heads, loss and backward, from the backbone's features) and the whole detector,
on the same scan with the same head settings (``DetectionHeadConfig`` defaults: KITTI's front range at 0.4 m).
``head_share`` is head / (backbone + head). Runs of the backbones alternate; the minimum over repeats is reported
(the median too): on a shared machine the minimum is the least disturbed run.

Scan: by default a lidar-like ring scan (``slidr bench sparse``'s) cropped to the front 90 degrees (KITTI's camera
view, as detectors on KITTI see it) and subsampled to ``--points``; ``--scan FILE`` reads a lidar ``.bin`` instead
(KITTI velodyne: ``--dims 4``), cropped and subsampled the same way. Cylindrical voxels (0.1 m x 1 deg x 0.1 m).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, cast

import numpy as np
import torch

from slidr.bench import DEVICE_FLAG, BenchResult, DeviceSetting, resolve_device, timed
from slidr.bench.sparse import ring_scan
from slidr.cli.settings import CommandSettings, Flag
from slidr.config import BackboneConfig, ConfigError, DetectionHeadConfig, at_least, setting, subkey
from slidr.data.voxelize import voxelize
from slidr.errors import DataError
from slidr.methods.detection import detection_loss, encode_targets
from slidr.models.detection import build_detector
from slidr.models.sparse import SparseTensor
from slidr.models.unet import PRESETS, SRUNet, build_backbone

NAME = "detector"
HELP = "BEV detector forward+backward per scan: backbone alone vs whole detector, several backbones side by side"

# a car, a pedestrian and a cyclist in front of the sensor (the loss needs targets)
BOXES = np.array([[15.0, -3.0, -0.9, 3.9, 1.6, 1.55, 0.3], [10.0, 3.0, -0.85, 0.8, 0.6, 1.75, -1.0],
                  [25.0, 5.0, -0.85, 1.8, 0.6, 1.75, 2.0]])


@dataclass(frozen=True)
class DetectorBenchConfig(DeviceSetting):
    """``slidr bench detector``: the backbones timed and the scan they are timed on."""

    backbones: list[str] = setting(factory=lambda: ["minkunet14_half", "minkunet34"],
                                   help="backbones timed side by side")
    points: int = setting(20_000, help="points per scan after cropping")
    threads: int = setting(2, help="torch threads")
    repeats: int = setting(3, help="timed runs per backbone and part")
    scan: Optional[str] = setting(None, help="a lidar .bin file instead of the ring scan")
    dims: int = setting(4, help="float32 values per point in --scan")
    seed: int = setting(0, help="seed of the ring scan and of the point subsampling")

    def validate(self, where: str) -> None:
        if not self.backbones:
            raise ConfigError(f"{subkey(where, 'backbones')} must name at least one backbone",
                              key=subkey(where, "backbones"))
        for name in self.backbones:
            if name not in PRESETS:
                raise ConfigError(f"{subkey(where, 'backbones')}: {name!r} is not one of {', '.join(PRESETS)}",
                                  key=subkey(where, "backbones"))
        for name in ("points", "threads", "repeats"):
            at_least(getattr(self, name), 1, subkey(where, name))
        at_least(self.dims, 3, subkey(where, "dims"))
        at_least(self.seed, 0, subkey(where, "seed"))


SETTINGS = CommandSettings(DetectorBenchConfig, flags=[Flag(name) for name in (
    "backbones", "points", "threads", "repeats", "scan", "dims", "seed")] + [DEVICE_FLAG])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)


def front_scan(points: np.ndarray, count: int, seed: int, cfg: DetectionHeadConfig) -> np.ndarray:
    """Points (N, 3+) in the front 90 degrees and the head's range, ``count`` of them drawn at random (all if fewer)."""
    x_min, y_min, z_min, x_max, y_max, z_max = cfg.point_range
    keep = (points[:, 0] > np.abs(points[:, 1])) & (points[:, 0] >= x_min) & (points[:, 0] < x_max) \
        & (points[:, 1] >= y_min) & (points[:, 1] < y_max)
    points = points[keep]
    if len(points) > count:
        points = points[np.sort(np.random.default_rng(seed).choice(len(points), count, replace=False))]
    return points


def run(args: argparse.Namespace) -> BenchResult:
    args = args.settings
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    head_cfg = DetectionHeadConfig()
    if args.scan is not None:
        raw = np.fromfile(Path(args.scan), dtype=np.float32)
        if raw.size % args.dims:
            raise DataError(f"{args.scan}: {raw.size} float32 values are not a multiple of --dims {args.dims}")
        points = raw.reshape(-1, args.dims)[:, :4]
        source = str(args.scan)
    else:
        xyz = ring_scan(args.seed, steps=2048)
        points = np.column_stack([xyz, np.full(len(xyz), 0.5)]).astype(np.float32)
        source = "ring scan (64 beams, 2048 azimuths)"
    points = np.ascontiguousarray(front_scan(points, args.points, args.seed, head_cfg), dtype=np.float32)
    coords, kept, inverse = voxelize(points, "cylindrical", 0.1, 1.0)
    coords4 = torch.from_numpy(np.column_stack([np.zeros(len(coords), np.int32), coords])).to(device)
    feats = torch.from_numpy(np.clip(points[kept, 3:4], 0, 1)).to(device)
    points_t, inverse_t = torch.from_numpy(points).to(device), torch.from_numpy(inverse).to(device)
    point_batch = torch.zeros(len(points), dtype=torch.int64, device=device)

    detectors = {}
    for name in args.backbones:
        torch.manual_seed(args.seed)
        backbone = cast(SRUNet, build_backbone(BackboneConfig(name=name, normalize_output=False)))  # a U-Net preset
        detectors[name] = build_detector(backbone,
                                         head_cfg).train().to(device)
    targets = encode_targets([BOXES], [np.array([0, 1, 2])], next(iter(detectors.values())).grid,
                             len(head_cfg.classes), device=device)

    def backbone_step(name: str) -> float:
        model = detectors[name]
        model.zero_grad(set_to_none=True)
        return timed(lambda: model.model_points.forward_features(SparseTensor(coords4, feats)).sum().backward(),
                     device)[1]

    def detector_step(name: str) -> float:
        model = detectors[name]
        model.zero_grad(set_to_none=True)

        def step() -> None:
            outputs = model(SparseTensor(coords4, feats), points_t, inverse_t, point_batch, 1)
            detection_loss(outputs, targets)[0].backward()

        return timed(step, device)[1]

    def head_step(name: str) -> float:
        model = detectors[name]
        with torch.no_grad():
            features = model.model_points.forward_features(SparseTensor(coords4, feats))
        features.requires_grad_(True)
        model.zero_grad(set_to_none=True)

        def step() -> None:
            outputs = model.head(features[inverse_t], points_t, point_batch, 1)
            detection_loss(outputs, targets)[0].backward()

        return timed(step, device)[1]

    steps = {"bb": backbone_step, "head": head_step, "det": detector_step}
    times: dict[tuple[str, str], list[float]] = {(n, part): [] for n in args.backbones for part in steps}
    for name in args.backbones:  # warm-up
        for step in steps.values():
            step(name)
    for _ in range(args.repeats):
        for name in args.backbones:
            for part, step in steps.items():
                times[(name, part)].append(step(name))

    rows, data = [], {"points": len(points), "voxels": len(coords), "threads": args.threads, "device": str(device),
                      "scan": source, "grid": list(head_cfg.grid_shape), "backbones": {}}
    reference = min(times[(args.backbones[0], "det")])
    for name in args.backbones:
        backbone_s, head_s, detector_s = (min(times[(name, part)]) for part in ("bb", "head", "det"))
        head_params = sum(p.numel() for p in detectors[name].head.parameters())
        backbone_params = sum(p.numel() for n, p in detectors[name].model_points.named_parameters()
                              if not n.startswith("final."))
        rows.append({"backbone": name, "backbone_s": round(backbone_s, 3), "detector_s": round(detector_s, 3),
                     "head_s": round(head_s, 3), "head_share": f"{100 * head_s / (head_s + backbone_s):.0f}%",
                     "vs_first": f"{detector_s / reference:.2f}x"})
        data["backbones"][name] = {
            "backbone_s_min": backbone_s, "head_s_min": head_s, "detector_s_min": detector_s,
            "head_s_median": statistics.median(times[(name, "head")]),
            "backbone_s_median": statistics.median(times[(name, "bb")]),
            "detector_s_median": statistics.median(times[(name, "det")]),
            "backbone_parameters": backbone_params, "head_parameters": head_params}
    notes = [f"{source}: {len(points)} points in the front 90 deg, {len(coords)} cylindrical voxels; "
             f"{args.threads} threads; forward+backward per scan, minimum over {args.repeats} runs"]
    return BenchResult(rows, data, notes)
