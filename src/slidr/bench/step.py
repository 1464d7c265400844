"""``slidr bench step``: time of one image-to-lidar training step (SLidR, PPKT, ST-SLidR, ScaLR), by stage.

Stages: data (loading and collating a batch), image (frozen encoder + head forward), points (3D network
forward), loss (forward), backward (all of it), optimizer (the configured optimizer's step). Each stage is
synchronised on GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

from slidr.bench import BenchResult
from slidr.cli.settings import CommandSettings, count
from slidr.config import PretrainConfig

NAME = "step"
HELP = "time per image-to-lidar training step: data, image encoder, 3D forward, loss, backward (JSON with --json)"
STAGES = ("data_ms", "image_ms", "points_ms", "loss_ms", "backward_ms", "optimizer_ms")
SETTINGS = CommandSettings(PretrainConfig, default_config="pretrain/demo_cpu.yaml",
                           config_help="pretraining config (set data.index=...)",
                           overrides_help="config overrides by dotted path")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)
    parser.add_argument("--steps", type=count(1), default=3, help="timed steps after one warm-up step (default 3)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")


def run(args: argparse.Namespace) -> BenchResult:
    import torch

    from slidr.engine.data import SeededDataset, derive_seed
    from slidr.engine.optim import build_optimizer
    from slidr.errors import SlidrError
    from slidr.methods.image_to_lidar import ImageToLidarModule
    from slidr.methods.pretrain import build_module

    cfg: PretrainConfig = args.settings
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(cfg.trainer.seed)
    module = build_module(cfg).to(device).train()
    if not isinstance(module, ImageToLidarModule):
        raise SlidrError(f"method {cfg.method!r}: bench step times image-to-lidar methods (slidr, ppkt, stslidr, "
                             f"scalr)")
    dataset, collate = module.train_dataset()
    seeded = SeededDataset(dataset)
    optimizer = build_optimizer(module.trainable_parameters(), cfg.optim)

    def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, (time.perf_counter() - start) * 1000

    def to_device(batch: dict) -> dict:
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    records = []
    size = cfg.trainer.batch_size
    for step in range(args.steps + 1):
        items = [((step * size + i) % len(dataset), derive_seed(cfg.trainer.seed, step, i)) for i in range(size)]
        batch, data_ms = timed(lambda: module.select_pairs(to_device(collate([seeded[item] for item in items]))))
        optimizer.zero_grad(set_to_none=True)
        pixels, image_ms = timed(lambda: module.forward_images(batch))
        points, points_ms = timed(lambda: module.forward_points(batch))
        (loss, stats), loss_ms = timed(lambda: module.loss_from_features(points, pixels, batch))
        _, backward_ms = timed(loss.backward)
        _, optimizer_ms = timed(optimizer.step)
        if step > 0:  # the first step warms up allocators and caches
            records.append(dict(zip(STAGES, (data_ms, image_ms, points_ms, loss_ms, backward_ms, optimizer_ms)),
                                pairs=stats.get("pairs"), superpixels=stats.get("superpixels"),
                                voxels=int(batch["voxel_coords"].shape[0])))
    medians = {stage: statistics.median(r[stage] for r in records) for stage in STAGES}
    total = sum(medians.values())
    rows = [{"stage": stage.removesuffix("_ms"), "ms": round(ms, 1), "share": f"{100 * ms / total:.0f}%"}
            for stage, ms in medians.items()]
    rows.append({"stage": "total", "ms": round(total, 1), "share": "100%"})
    data = {**{k: round(v, 2) for k, v in medians.items()}, "step_ms": round(total, 2),
            "scans_per_s": round(1000 * size / total, 3), "batch_size": size, "method": cfg.method,
            "backbone": cfg.backbone.name, "image_encoder": cfg.image.encoder, "device": str(device),
            "image_size": cfg.data.image_size, "voxels_per_batch": statistics.median(r["voxels"] for r in records),
            "pairs_per_batch": statistics.median(r["pairs"] for r in records), "steps": records}
    return BenchResult(rows, data, notes=[f"{cfg.method}, {cfg.backbone.name}, {cfg.image.encoder}, batch {size},"
                                          f" {device}; medians over {len(records)} steps"])
