"""``slidr bench sparse``: forward+backward of the SR-UNet, plain-PyTorch engine against spconv, side by side, and
against the machine's own matrix-multiply speed.

Same scans, same network, same weights, same upstream gradient; one training step = building the batch's
coordinate levels and kernel maps (as every new batch does), forward, backward. spconv's CPU build is only
correct with one thread, so it is timed at one thread only; the engine is timed at every requested thread count.
Runs of the two backends alternate and the minimum over repeats is reported (the median too): on a shared
machine the minimum is the least disturbed run.

"% of peak" table: the multiply-adds of every layer are counted exactly from its kernel map (one ``Cin x Cout``
product per pair; the backward does twice the forward's: input and weight gradients). Each layer is replayed
alone (forward+backward on its recorded input) to time the layer types; the whole network row uses the training
step's time (maps, batch norms and activations included). The ceiling is ``torch.mm`` measured in the same run at
the same thread count on the layers' own shapes: the three products of each layer (forward, input gradient,
weight gradient) as dense ``(R, Cin) x (Cin, Cout)`` products of cache-sized row blocks (R = min(N, 2048)) and in
the implicit-GEMM shapes ``(R', K*Cin) x (K*Cin, Cout)`` (R' = min(N, 256)); the faster of the two counts.

Scans: by default lidar-like ring scans (64 beams over a ground plane and walls/objects of random range and
height, range noise), voxelized cylindrically (0.1 m x 1 deg x 0.1 m) and cropped by range to ``--voxels`` sites;
``--points FILE`` uses a real lidar file instead (e.g. a nuScenes ``.pcd.bin``; rotated copies for batch > 1).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, cast

import numpy as np
import torch
from torch import nn

from slidr.bench import DEVICE_FLAG, BenchResult, DeviceSetting, peak_memory_mb, resolve_device, synchronize
from slidr.cli.settings import CommandSettings, Flag
from slidr.config import BackboneConfig, ConfigError, at_least, setting, subkey
from slidr.data.voxelize import voxelize
from slidr.models.sparse import Conv3dDown, ConvTranspose3dUp, SparseTensor, SubmanifoldConv3d
from slidr.models.sparse.conv import _SparseConvBase
from slidr.models.sparse.spconv_backend import spconv_available, use_backend
from slidr.models.unet import PRESETS, build_backbone
from slidr.utils.progress import progress

NAME = "sparse"
HELP = "SR-UNet forward+backward: plain-PyTorch sparse engine vs spconv (time, memory, agreement)"

SENSOR_HEIGHT = 1.8
MAX_RANGE = 70.0


@dataclass(frozen=True)
class SparseBenchConfig(DeviceSetting):
    """``slidr bench sparse``: network, scan size, batch sizes, threads, repetitions."""

    network: str = setting("minkunet34", help="backbone")
    voxels: int = setting(30_000, help="voxels per scan")
    batch_sizes: list[int] = setting(factory=lambda: [1, 4], help="scans per batch")
    threads: list[int] = setting(factory=lambda: [1, 2], help="torch threads")
    repeats: int = setting(3, help="timed steps per setting and backend")
    points: Optional[str] = setting(None, help="a lidar .bin file instead of synthetic scans")
    dims: int = setting(5, help="float32 values per point in --points")
    no_spconv: bool = setting(False, help="time the plain-PyTorch engine only")
    no_peak: bool = setting(False, help="skip the percent-of-peak table")
    seed: int = setting(0, help="seed of the scans and weights")

    def validate(self, where: str) -> None:
        if self.network not in PRESETS:
            key = subkey(where, "network")
            raise ConfigError(f"{key}: {self.network!r} is not one of {', '.join(PRESETS)}", key=key)
        for name in ("voxels", "repeats", "dims"):
            at_least(getattr(self, name), 1, subkey(where, name))
        for name in ("batch_sizes", "threads"):
            if not getattr(self, name):
                raise ConfigError(f"{subkey(where, name)} must not be empty", key=subkey(where, name))
            at_least(min(getattr(self, name)), 1, subkey(where, name))
        at_least(self.seed, 0, subkey(where, "seed"))


SETTINGS = CommandSettings(SparseBenchConfig, flags=[
    Flag("network", choices=list(PRESETS)), Flag("voxels"), Flag("batch_sizes"), Flag("threads"), Flag("repeats"),
    Flag("points"), Flag("dims"), Flag("no_spconv"), Flag("no_peak"), Flag("seed"), DEVICE_FLAG])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)


def ring_scan(seed: int, beams: int = 64, steps: int = 900) -> np.ndarray:
    """A lidar-like scan (N, 3): rings of ``beams`` elevations from -30 to +10 deg, ``steps`` azimuths.

    Rays hit a ground plane ``SENSOR_HEIGHT`` below the sensor or, where nearer, one of 60 azimuth sectors of
    random range (5-45 m) and height (1-12 m); ranges get 2 cm noise and are cut at ``MAX_RANGE``.
    """
    rng = np.random.default_rng(seed)
    elevation = np.radians(np.linspace(-30.0, 10.0, beams))
    azimuth = np.radians(np.arange(steps) * 360.0 / steps) + rng.normal(0.0, 1e-3, steps)
    edges = np.sort(rng.uniform(0.0, 2 * np.pi, 60))
    sector = np.searchsorted(edges, azimuth) % 60
    wall_range = rng.uniform(5.0, 45.0, 60)[sector]
    wall_height = rng.uniform(1.0, 12.0, 60)[sector]
    slope = np.tan(elevation)[:, None]
    ground_range = np.where(slope < 0, SENSOR_HEIGHT / np.maximum(-slope, 1e-6), np.inf)
    hits_wall = slope * wall_range[None] < wall_height[None] - SENSOR_HEIGHT
    horizontal = np.where(hits_wall, np.minimum(ground_range, wall_range[None]), ground_range)
    horizontal = np.minimum(horizontal, MAX_RANGE) + rng.normal(0.0, 0.02, horizontal.shape)
    keep = horizontal < MAX_RANGE - 0.1
    x = horizontal * np.cos(azimuth)[None]
    y = horizontal * np.sin(azimuth)[None]
    z = horizontal * slope
    return np.stack((x[keep], y[keep], z[keep]), axis=1)


def _nearest_voxels(points: np.ndarray, count: int) -> np.ndarray:
    """Cylindrical voxel coordinates (V, 3) of a scan, the ``count`` nearest to the sensor (all if fewer)."""
    coords, _, _ = voxelize(points, "cylindrical", 0.1, 1.0)
    order = np.argsort(coords[:, 0], kind="stable")  # coords[:, 0] is the range bin
    return coords[np.sort(order[:count])]


def make_scans(args: argparse.Namespace, batch_size: int) -> list[np.ndarray]:
    """Voxel coordinates (V, 3) int32 of each scan of a batch."""
    if args.points is not None:
        from slidr.data.io import read_points

        points = read_points(args.points, args.dims).points[:, :3]
        scans = []
        for b in range(batch_size):
            angle = np.radians(37.0 * b)  # rotated copies: different voxels, same scene statistics
            rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
            scans.append(_nearest_voxels(points @ rotation.T, args.voxels))
        return scans
    scans = []
    for b in range(batch_size):
        steps = 600
        coords = _nearest_voxels(ring_scan(args.seed + b, steps=steps), args.voxels)
        while coords.shape[0] < args.voxels and steps < 20_000:
            steps = int(steps * 1.25)
            coords = _nearest_voxels(ring_scan(args.seed + b, steps=steps), args.voxels)
        scans.append(coords)
    return scans


def batch_coords(scans: list[np.ndarray]) -> torch.Tensor:
    """(sum V, 4) int32 ``[batch, x, y, z]`` of a list of scans."""
    rows = [np.concatenate((np.full((len(c), 1), b, np.int32), c.astype(np.int32)), axis=1)
            for b, c in enumerate(scans)]
    return torch.from_numpy(np.concatenate(rows))


class _Step:
    """One training step of a model on fixed inputs with a fixed upstream gradient."""

    def __init__(self, model: torch.nn.Module, coords: torch.Tensor, feats: torch.Tensor, probe: torch.Tensor):
        self.model, self.coords, self.feats, self.probe = model, coords, feats, probe

    def __call__(self) -> torch.Tensor:
        self.model.zero_grad(set_to_none=True)
        out = self.model(SparseTensor(self.coords, self.feats))
        (out * self.probe).sum().backward()
        return out.detach()


def _timed_both(fn: Callable[[], Any], device: torch.device | None = None) -> tuple[float, float]:
    """Wall time and this process's CPU time of ``fn()`` (at one thread, CPU time is what others' load spares)."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _peak_mb(fn, device: torch.device) -> float:
    """Peak extra memory of ``fn()``; glibc's freed-but-kept heap is returned to the system first, otherwise a
    step reusing the previous step's memory would show no growth in resident size."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the measure may under-count reused memory
        pass
    return peak_memory_mb(fn, device)


def _map_and_forward_times(model: torch.nn.Module, coords: torch.Tensor, feats: torch.Tensor,
                           repeats: int, device: torch.device) -> tuple[float, float]:
    """Minimum time (CPU time on CPU, wall time on CUDA) to build every level and kernel map of a batch, and of a
    forward reusing the built maps."""
    clock = 1 if device.type == "cpu" else 0

    def build_maps():
        cache = SparseTensor(coords, feats).cache
        for stride in (1, 2, 4, 8, 16):  # the U-Net's levels; each builds its stride-2 map on the way
            cache.submanifold_map(stride)

    def forward():
        with torch.no_grad():
            model(built)

    built = SparseTensor(coords, feats)
    with torch.no_grad():
        model(built)  # builds the maps once
    map_times = [_timed_both(build_maps, device)[clock] for _ in range(repeats)]
    forward_times = [_timed_both(forward, device)[clock] for _ in range(repeats)]
    return min(map_times), min(forward_times)


# ---------------------------------------------------------------------------------------------- % of peak

LAYER_KINDS = ("submanifold", "point-wise", "strided", "transposed", "linear head")


@dataclass
class LayerRecord:
    """One matrix-multiplying layer of a network as run on one batch.

    ``multiply_adds`` are those of the forward (the backward does twice as many); ``rows_in``/``rows_out`` are
    the input and output site counts and ``volume`` the kernel's number of offsets.
    """

    kind: str
    module: nn.Module
    inputs: Any  # SparseTensor (convolutions) or Tensor (the linear head)
    multiply_adds: int
    rows_in: int
    rows_out: int
    in_channels: int
    out_channels: int
    volume: int


def layer_kind(module: nn.Module) -> str | None:
    """Layer type of a module for the % of peak table, None for modules without matrix products."""
    if isinstance(module, SubmanifoldConv3d):
        return "point-wise" if module.kernel_size == 1 else "submanifold"
    if isinstance(module, Conv3dDown):
        return "strided"
    if isinstance(module, ConvTranspose3dUp):
        return "transposed"
    if isinstance(module, nn.Linear):
        return "linear head"
    return None


def record_layers(model: nn.Module, x: SparseTensor) -> list[LayerRecord]:
    """Every sparse convolution and linear layer of ``model`` with its input and exact multiply-adds on ``x``."""
    records: list[LayerRecord] = []

    def hook(module: nn.Module, inputs: tuple, _output: Any) -> None:
        kind = cast(str, layer_kind(module))  # hooked on layers with a kind only
        value = inputs[0]
        if isinstance(module, _SparseConvBase):
            kernel_map = module.kernel_map(value)
            records.append(LayerRecord(kind, module, value, module.multiply_adds(value), kernel_map.num_in,
                                       kernel_map.num_out, module.in_channels, module.out_channels,
                                       module.kernel_size**3))
        else:
            linear = cast(nn.Linear, module)  # the only other kind
            rows = value.reshape(-1, value.shape[-1]).shape[0]
            records.append(LayerRecord(kind, linear, value, rows * linear.in_features * linear.out_features, rows,
                                       rows, linear.in_features, linear.out_features, 1))

    handles = [m.register_forward_hook(hook) for m in model.modules() if layer_kind(m) is not None]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return records


def _replay(records: list[LayerRecord], seed: int) -> Callable[[], None]:
    """Forward+backward of each recorded layer alone, on its recorded input, with a fixed upstream gradient."""
    generator = torch.Generator().manual_seed(seed)
    prepared: list[tuple[nn.Module, Optional[SparseTensor], torch.Tensor, torch.Tensor]] = []
    for record in records:
        if isinstance(record.inputs, SparseTensor):
            x = record.inputs
            feats = x.feats.detach().clone()
            grad = torch.randn(record.rows_out, record.out_channels, generator=generator).to(feats.device)
            prepared.append((record.module, x, feats, grad))
        else:
            feats = record.inputs.detach().clone()
            grad = torch.randn(*feats.shape[:-1], record.out_channels, generator=generator).to(feats.device)
            prepared.append((record.module, None, feats, grad))

    def run() -> None:
        for module, x, feats, grad in prepared:
            module.zero_grad(set_to_none=True)
            leaf = feats.requires_grad_(True)
            out = module(x.replace(leaf)) if x is not None else module(leaf)
            (out.feats if isinstance(out, SparseTensor) else out).backward(grad)
            feats.grad = None

    return run


# Rows of the ceiling's operands: per-offset products and implicit-GEMM products (see MatmulCeiling.seconds).
DENSE_ROWS = 2048
IMPLICIT_ROWS = 256


class MatmulCeiling:
    """``torch.mm`` speed on given shapes, measured once per shape (minimum over repeats) on one device."""

    def __init__(self, device: torch.device, repeats: int = 3):
        self.device, self.repeats = device, repeats
        self.rates: dict[tuple[int, int, int, bool], float] = {}

    def rate(self, m: int, k: int, n: int, transposed_a: bool = False) -> float:
        """FLOP/s of ``(m, k) @ (k, n)``; ``transposed_a``: the left operand is a (k, m) matrix's transpose (the
        weight gradient's ``feats.t() @ grad``)."""
        key = (m, k, n, transposed_a)
        if key not in self.rates:
            left = torch.randn(k, m, device=self.device).t() if transposed_a else torch.randn(m, k, device=self.device)
            right = torch.randn(k, n, device=self.device)
            out = torch.empty(m, n, device=self.device)
            times = []
            for _ in range(self.repeats + 1):
                wall = _timed_both(lambda: torch.mm(left, right, out=out), self.device)[0]
                times.append(wall)
            self.rates[key] = 2.0 * m * k * n / max(min(times[1:]), 1e-9)
        return self.rates[key]

    def seconds(self, record: LayerRecord) -> float:
        """Time dense matrix products would need for the layer's forward+backward multiply-adds, at the best of the
        layer's own shapes with operands sized to stay in cache (an implementation chunks its rows anyway; with all
        of a 30,000-site level in one operand ``torch.mm`` is limited by memory bandwidth on a shared machine):
        per-offset ``(R, Cin) x (Cin, Cout)`` with R = min(N, 2048), or implicit-GEMM ``(R', K*Cin) x (K*Cin, Cout)``
        with R' = min(N, 256); likewise for the input-gradient and weight-gradient products."""
        flops = 2.0 * record.multiply_adds  # each of forward, input gradient, weight gradient
        cin, cout, volume = record.in_channels, record.out_channels, record.volume
        rows_in, rows_out = min(record.rows_in, DENSE_ROWS), min(record.rows_out, DENSE_ROWS)
        rows = min(record.rows_out, IMPLICIT_ROWS)
        forward = max(self.rate(rows_out, cin, cout), self.rate(rows, volume * cin, cout))
        input_grad = max(self.rate(rows_in, cout, cin), self.rate(rows, volume * cout, cin))
        weight_grad = max(self.rate(cin, rows_out, cout, True), self.rate(volume * cin, rows, cout, True))
        return flops / forward + flops / input_grad + flops / weight_grad


def peak_table(model: nn.Module, coords: torch.Tensor, feats: torch.Tensor, step_seconds: float, threads: int,
               repeats: int, device: torch.device, seed: int = 0) -> list[dict]:
    """Rows of the % of peak table: per layer type, all layers together, and the whole training step.

    ``step_seconds`` is the training step's time on the same clock: this process's CPU time at one CPU thread
    (what other processes' load leaves least disturbed), wall time otherwise.
    """
    records = record_layers(model, SparseTensor(coords, feats))
    ceiling = MatmulCeiling(device)
    clock = 1 if device.type == "cpu" and threads == 1 else 0
    rows = []

    def row(name: str, count: int, multiply_adds: int, seconds: float, ceiling_seconds: float) -> dict:
        work = 3 * multiply_adds  # forward + input gradient + weight gradient
        return {"threads": threads, "layers": name, "count": count, "gmac_fwd_bwd": work / 1e9,
                "seconds": seconds, "gflop_s": 2 * work / seconds / 1e9,
                "ceiling_gflop_s": 2 * work / ceiling_seconds / 1e9, "pct_of_peak": 100 * ceiling_seconds / seconds,
                "clock": "cpu" if clock else "wall"}

    total_seconds = total_ceiling = 0.0
    for kind in LAYER_KINDS:
        chosen = [r for r in records if r.kind == kind]
        if not chosen:
            continue
        replay = _replay(chosen, seed)
        replay()  # warm-up
        seconds = min(_timed_both(replay, device)[clock] for _ in range(repeats))
        ceiling_seconds = sum(ceiling.seconds(r) for r in chosen)
        rows.append(row(kind, len(chosen), sum(r.multiply_adds for r in chosen), seconds, ceiling_seconds))
        total_seconds += seconds
        total_ceiling += ceiling_seconds
    everything = sum(r.multiply_adds for r in records)
    rows.append(row("all layers (replayed)", len(records), everything, total_seconds, total_ceiling))
    rows.append(row("whole step", len(records), everything, step_seconds, total_ceiling))
    return rows


# ---------------------------------------------------------------------------------------------------- run

def run(args: argparse.Namespace) -> BenchResult:
    args = args.settings  # the validated SparseBenchConfig: its fields are the options' names
    device = resolve_device(args.device)
    threads_before = torch.get_num_threads()
    torch.manual_seed(args.seed)
    with_spconv = spconv_available() and not args.no_spconv
    notes = []
    if not with_spconv:
        notes.append("spconv not installed (or --no-spconv): engine timings only")
    model = build_backbone(BackboneConfig(name=args.network, in_channels=1, out_channels=64)).to(device)
    reference = use_backend(copy.deepcopy(model), "spconv") if with_spconv else None
    on_cpu = device.type == "cpu"
    thread_counts = args.threads if on_cpu else [threads_before]  # CUDA kernels do not use torch's CPU threads

    rows, settings, peak_rows = [], [], []
    data: dict = {"network": args.network, "voxels_per_scan": None, "repeats": args.repeats, "device": str(device),
                  "parameters": sum(p.numel() for p in model.parameters())}
    plan = [(t, b) for b in args.batch_sizes for t in thread_counts]
    batches = {}
    try:
        for threads, batch_size in progress(plan, desc="bench sparse", unit="setting"):
            torch.set_num_threads(threads)
            if batch_size not in batches:
                scans = make_scans(args, batch_size)
                coords = batch_coords(scans)
                generator = torch.Generator().manual_seed(args.seed)
                feats = torch.rand(coords.shape[0], 1, generator=generator)
                probe = torch.randn(coords.shape[0], 64, generator=generator)
                batches[batch_size] = (scans, coords.to(device), feats.to(device), probe.to(device))
            scans, coords, feats, probe = batches[batch_size]
            data["voxels_per_scan"] = data["voxels_per_scan"] or [len(s) for s in scans]
            ours = _Step(model, coords, feats, probe)
            spconv_here = reference is not None and (threads == 1 or not on_cpu)
            theirs = _Step(reference, coords, feats, probe) if reference is not None and spconv_here else None
            ours()  # warm-up (first-touch allocations, lazy inits)
            if theirs is not None:
                theirs()
            times_ours, times_theirs, cpu_ours, cpu_theirs = [], [], [], []
            for _ in range(args.repeats):  # alternate, so both see the same machine load
                wall, cpu = _timed_both(ours, device)
                times_ours.append(wall)
                cpu_ours.append(cpu)
                if theirs is not None:
                    wall, cpu = _timed_both(theirs, device)
                    times_theirs.append(wall)
                    cpu_theirs.append(cpu)
            setting = {"threads": threads, "batch": batch_size, "voxels": int(coords.shape[0]),
                       "slidr_fwd_bwd_s": min(times_ours), "slidr_median_s": statistics.median(times_ours),
                       "slidr_cpu_s": min(cpu_ours),
                       "spconv_fwd_bwd_s": min(times_theirs) if times_theirs else None,
                       "spconv_median_s": statistics.median(times_theirs) if times_theirs else None,
                       "spconv_cpu_s": min(cpu_theirs) if cpu_theirs else None}
            if times_theirs:
                setting["speedup_vs_spconv"] = setting["spconv_fwd_bwd_s"] / setting["slidr_fwd_bwd_s"]
                setting["cpu_speedup_vs_spconv"] = setting["spconv_cpu_s"] / setting["slidr_cpu_s"]
            if threads == 1 or not on_cpu:
                setting["slidr_peak_mb"] = _peak_mb(ours, device)
                if theirs is not None:
                    setting["spconv_peak_mb"] = _peak_mb(theirs, device)
                    a, b = ours(), theirs()
                    setting["max_rel_err_vs_spconv"] = ((a - b).abs().max() / b.abs().max()).item()
                map_s, forward_s = _map_and_forward_times(model, coords, feats, args.repeats, device)
                setting.update(map_build_s=map_s, forward_s=forward_s, map_fraction_of_forward=map_s / forward_s)
            if not args.no_peak and batch_size == args.batch_sizes[0]:
                step_s = setting["slidr_cpu_s"] if on_cpu and threads == 1 else setting["slidr_fwd_bwd_s"]
                peak_rows += peak_table(model, coords, feats, step_s, threads, args.repeats, device, args.seed)
            settings.append(setting)
            rows.append({key: setting.get(key) for key in (
                "threads", "batch", "voxels", "slidr_fwd_bwd_s", "spconv_fwd_bwd_s", "speedup_vs_spconv",
                "cpu_speedup_vs_spconv",
                "slidr_peak_mb", "spconv_peak_mb", "max_rel_err_vs_spconv", "map_fraction_of_forward")})
    finally:
        torch.set_num_threads(threads_before)

    headline = next((s for s in settings if s["threads"] == 1 and s["batch"] == 1), settings[0] if settings else None)
    for key in ("slidr_fwd_bwd_s", "spconv_fwd_bwd_s", "slidr_peak_mb", "max_rel_err_vs_spconv"):
        data[key] = headline.get(key) if headline else None
    data["settings"] = settings
    tables = {}
    if peak_rows:
        data["peak"] = peak_rows
        first = args.batch_sizes[0]
        tables[f"% of peak (batch {first}; ceiling: torch.mm on the layers' own shapes, same run and threads)"] = [
            {key: row[key] for key in ("threads", "layers", "count", "gmac_fwd_bwd", "seconds", "gflop_s",
                                       "ceiling_gflop_s", "pct_of_peak")} for row in peak_rows]
        notes.append("% of peak: layer types replayed one layer at a time; 'whole step' is the training step's time "
                     "(maps, batch norms, activations included) against the layers' ceiling; seconds are CPU time at "
                     "1 CPU thread, wall time otherwise")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if on_cpu and max(thread_counts) > 1 and load > (os.cpu_count() or 1):
        notes.append(f"load average {load:.1f} on {os.cpu_count()} cores: OpenMP threads wait for descheduled partners "
                     f"(measured here: a 2-thread step 20x slower than 1 thread with OpenMP's default spinning, 1.5x "
                     f"with OMP_WAIT_POLICY=PASSIVE set before starting; now {os.environ.get('OMP_WAIT_POLICY')})")
    if with_spconv:
        import spconv

        data["spconv_version"] = getattr(spconv, "__version__", None)
        if on_cpu:
            notes.append("spconv is timed at 1 thread only: its CPU build gives wrong results with more threads")
    return BenchResult(rows=rows, data=data, notes=notes, tables=tables)
