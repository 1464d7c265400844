"""``slidr bench step``: time of one image-to-lidar training step (SLidR, PPKT, ST-SLidR, ScaLR), by stage.

Stages: data (loading and collating a batch in this process, and moving it to the device), image (frozen encoder
+ head forward), points (3D network forward), loss (forward), backward (all of it), optimizer (the configured
optimizer's step). Each stage is synchronised on GPU. ``scans_per_s`` counts every stage; ``compute_scans_per_s``
leaves the data stage out (what the device sustains when the data loader's workers keep up, as in training).
Peak memory is taken over each training step, data loading excluded (CUDA: the allocator's peak of memory held by
tensors; CPU: the process's peak resident set); the largest over the timed steps is reported.

``--compare-spconv`` also runs every step with the 3D network through spconv (``use_backend``): same module,
same weights' layout, same batches, the two backends alternating step by step so that both see the same machine;
``ratio_to_spconv`` is spconv's compute time over the engine's (above 1: the plain-PyTorch engine is faster).
The paper's setting: ``--config pretrain/slidr_minkunet.yaml trainer.batch_size=4 data.index=...``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sized
from typing import Any, Callable, cast

from slidr.bench import BenchResult, MemoryPeak, add_device_option, resolve_device, timed
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
    parser.add_argument("--compare-spconv", action="store_true",
                        help="also run each step with the 3D network through spconv (same batches, alternating); "
                             "needs spconv (on CPU: trainer.num_threads=1)")
    add_device_option(parser)


def run(args: argparse.Namespace) -> BenchResult:
    import torch

    from slidr.engine.data import SeededDataset, derive_seed
    from slidr.engine.optim import build_optimizer
    from slidr.errors import SlidrError
    from slidr.methods.image_to_lidar import ImageToLidarModule
    from slidr.methods.pretrain import build_module

    cfg: PretrainConfig = args.settings
    device = resolve_device(args.device)
    compare = getattr(args, "compare_spconv", False)
    if compare and cfg.backbone.backend == "spconv":
        raise SlidrError("--compare-spconv compares the plain-PyTorch engine with spconv: leave backbone.backend "
                         "at torch")
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    torch.manual_seed(cfg.trainer.seed)
    module = build_module(cfg).to(device).train()
    if not isinstance(module, ImageToLidarModule):
        raise SlidrError(f"method {cfg.method!r}: bench step times image-to-lidar methods (slidr, ppkt, stslidr, "
                         f"scalr)")
    backends = [cfg.backbone.backend, *(["spconv"] if compare else [])]
    use = backend_switch(module.model_points, backends)
    dataset, collate = module.train_dataset()
    seeded = SeededDataset(dataset)
    optimizer = build_optimizer(module.trainable_parameters(), cfg.optim)
    size = cfg.trainer.batch_size

    def timed_ms(fn: Callable[[], Any]) -> tuple[Any, float]:
        out, seconds = timed(fn, device)
        return out, seconds * 1000

    def load(number: int) -> tuple[dict, float]:
        count = len(cast(Sized, dataset))
        items = [((number * size + i) % count, derive_seed(cfg.trainer.seed, number, i)) for i in range(size)]
        return timed_ms(lambda: module.select_pairs({k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                                                     for k, v in collate([seeded[item] for item in items]).items()}))

    def train_step(batch: dict) -> dict:
        with MemoryPeak(device) as memory:
            optimizer.zero_grad(set_to_none=True)
            pixels, image_ms = timed_ms(lambda: module.forward_images(batch))
            points, points_ms = timed_ms(lambda: module.forward_points(batch))
            (loss, stats), loss_ms = timed_ms(lambda: module.loss_from_features(points, pixels, batch))
            _, backward_ms = timed_ms(loss.backward)
            _, optimizer_ms = timed_ms(optimizer.step)
        return dict(zip(STAGES[1:], (image_ms, points_ms, loss_ms, backward_ms, optimizer_ms)),
                    pairs=stats.get("pairs"), superpixels=stats.get("superpixels"),
                    voxels=int(batch["voxel_coords"].shape[0]), loss=float(loss.detach()),
                    peak_mb=memory.peak_mb, peak_extra_mb=memory.extra_mb)

    batch, _ = load(0)
    for backend in backends:  # warms up allocators, caches and lazy initialisations: not counted
        use(backend)
        train_step(batch)
    records: dict[str, list[dict]] = {backend: [] for backend in backends}
    for number in range(1, args.steps + 1):
        batch, data_ms = load(number)
        for backend in (backends if number % 2 else backends[::-1]):  # alternate which backend goes first
            use(backend)
            records[backend].append({"data_ms": data_ms, **train_step(batch)})
    use(backends[0])

    measures = {backend: _measures(rows, size) for backend, rows in records.items()}
    ours = measures[backends[0]]
    rows: list[dict[str, Any]] = [{"stage": stage.removesuffix("_ms"), "ms": round(ours[stage], 1),
             "share": f"{100 * ours[stage] / ours['step_ms']:.0f}%"} for stage in STAGES]
    rows.append({"stage": "total", "ms": round(ours["step_ms"], 1), "share": "100%"})
    data: dict[str, Any] = {
        **{key: round(value, 2) for key, value in ours.items()}, "batch_size": size, "method": cfg.method,
        "backbone": cfg.backbone.name, "backend": cfg.backbone.backend, "image_encoder": cfg.image.encoder,
        "device": str(device), "image_size": cfg.data.image_size,
        "voxels_per_batch": statistics.median(r["voxels"] for r in records[backends[0]]),
        "pairs_per_batch": statistics.median(r["pairs"] for r in records[backends[0]]),
        "steps": records[backends[0]]}
    memory_kind = "GPU memory held by tensors" if device.type == "cuda" else "process resident set"
    notes = [f"{cfg.method}, {cfg.backbone.name} ({cfg.backbone.backend}), {cfg.image.encoder}, batch {size}, "
             f"{device}; medians over {args.steps} steps",
             f"{data['scans_per_s']} scans/s ({data['compute_scans_per_s']} without the data stage); peak "
             f"{data['peak_mb']} MB ({memory_kind})"]
    if compare:
        theirs = measures["spconv"]
        for row in rows:
            key = "step_ms" if row["stage"] == "total" else row["stage"] + "_ms"
            row["spconv_ms"] = round(theirs[key], 1)
        data["spconv"] = {**{key: round(value, 2) for key, value in theirs.items()}, "steps": records["spconv"]}
        data["ratio_to_spconv"] = round(theirs["compute_ms"] / ours["compute_ms"], 3)
        notes.append(f"through spconv: {data['spconv']['compute_scans_per_s']} scans/s without the data stage, "
                     f"peak {data['spconv']['peak_mb']} MB; spconv's compute time / the engine's: "
                     f"{data['ratio_to_spconv']}")
    return BenchResult(rows, data, notes=notes)


def _measures(records: list[dict], batch_size: int) -> dict[str, float]:
    """Median stage times over the steps, their sums (with and without the data stage), the rates and the largest
    peak memory."""
    medians = {stage: statistics.median(r[stage] for r in records) for stage in STAGES}
    step_ms = sum(medians.values())
    compute_ms = step_ms - medians["data_ms"]
    return {**medians, "step_ms": step_ms, "compute_ms": compute_ms, "scans_per_s": 1000 * batch_size / step_ms,
            "compute_scans_per_s": 1000 * batch_size / compute_ms,
            "peak_mb": max(r["peak_mb"] for r in records), "peak_extra_mb": max(r["peak_extra_mb"] for r in records)}


def backend_switch(model: Any, backends: list[str]) -> Callable[[str], None]:
    """A function ``use(backend)`` that switches the sparse convolutions of ``model`` between ``backends``.

    Each backend's per-layer state is built once (spconv's layer modules are made lazily on their first call and
    kept), so switching inside a timed loop costs nothing.
    """
    if len(backends) == 1:
        return lambda backend: None
    from slidr.models.sparse.spconv_backend import use_backend

    layers = [m for m in model.modules() if hasattr(m, "backend_impl")]
    states = {}
    for backend in backends:
        use_backend(model, backend)
        states[backend] = [layer.backend_impl for layer in layers]

    def use(backend: str) -> None:
        for layer, impl in zip(layers, states[backend]):
            layer.backend_impl = impl

    return use
