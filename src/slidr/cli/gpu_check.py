"""``slidr gpu-check --out DIR``: the benchmarks that matter on a GPU, in one run under a time budget, one JSON.

What it does, in order (``scripts/gpu_check.sh`` installs slidr over the machine's own torch first):

1. the environment: torch, CUDA, cuDNN, the GPU, the packages the check needs (a missing one stops it with one
   line naming them all) and the optional ones (spconv, nuscenes-devkit, ...); whether spconv is installed and
   *works* on the device (a small engine-vs-spconv forward and backward must agree);
2. the data of ``bench step``: a small synthetic world (generated in ``--world``, reused when it is there), its
   index and its SLIC superpixels; or ``--index`` (an index prepared with ``slidr prepare`` and ``slidr
   superpixels``, e.g. of real nuScenes);
3. the benchmarks, each a ``slidr bench`` process of its own with a time limit (its share of ``--budget-s``), so
   that one that fails or hangs is recorded and the others still run:
   ``bench sparse`` (MinkUNet34 forward+backward, 30,000 voxels per scan, batches 1 and 4, plain-PyTorch engine
   against spconv), ``bench loss`` (the SLidR loss at the paper's batch: 4 scans x 6 images at 224x416, against
   the authors' one-hot formulation), ``bench step`` (a training step of the paper's config
   ``pretrain/slidr_minkunet.yaml`` at batch 4 with the plain-PyTorch engine and, where spconv works, with the
   3D network through spconv, alternating step by step: ``--compare-spconv``);
4. ``DIR/gpu_check.json`` (schema below), ``DIR/gpu_check.md`` (a table), and per benchmark ``DIR/bench/NAME.json``
   (what ``slidr bench NAME --json`` writes) and ``DIR/bench/NAME.log`` (its output).

``--tiny`` shrinks everything (a few hundred voxels, one step, a 2-keyframe world, small networks): it tests the
path on a CPU in seconds and measures nothing worth reading. Exit status 0 when every benchmark ran and succeeded,
1 otherwise (one failed, was stopped at its time limit or skipped for lack of time; the JSON is written either way).

JSON (``schema`` = ``"slidr-gpu-check/1"``): ``passed``, ``device``, ``tiny``, ``budget_s``, ``wall_s``,
``finished``; ``environment`` (``python``, ``platform``, ``cpu_count``, ``torch``, ``cuda``, ``cudnn``, ``gpu``,
``gpu_memory_gb``, ``slidr``, ``slidr_path``, ``packages`` (distribution -> version or null),
``missing_optional``); ``spconv`` (``installed``, ``version``, ``usable``, ``status``, ``max_rel_err``); ``data``
(``kind``, ``index``, ``world``, ``seconds``); ``benches``: for ``sparse``, ``loss`` and ``step`` each ``status``
(ok / failed / timeout / skipped), ``reason``, ``seconds``, ``limit_s``, ``command``, ``samples_per_s``
(scans/s), ``peak_mb`` (peak memory on the device: CUDA's allocator peak, or the process's peak resident set on
the CPU), ``time_split_ms`` (stage -> ms), ``ratio_to_spconv`` (spconv's time / the plain-PyTorch engine's: above
1, the engine is faster; null without spconv), ``spconv`` (the same measures through spconv, or null),
``details`` (bench-specific) and ``raw`` (the benchmark's own JSON); ``skipped``: one line per skipped part.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, cast

from slidr.cli.settings import CommandSettings, Flag
from slidr.config import ConfigBase, ConfigError, at_least, positive, setting, subkey

NAME = "gpu-check"
HELP = "run bench sparse, loss and step on the GPU under a time budget (engine vs spconv); one JSON + markdown"
SCHEMA = "slidr-gpu-check/1"

# import name -> distribution: what the check's own runs import (world generation, benches sparse, loss, step)
# (matplotlib: torchmetrics imports it; pyquaternion: preparing the world's index, as the devkit rotates)
REQUIRED = {"numpy": "numpy", "scipy": "scipy", "skimage": "scikit-image", "numba": "numba", "PIL": "pillow",
            "yaml": "pyyaml", "tqdm": "tqdm", "lightning": "lightning", "torchmetrics": "torchmetrics",
            "matplotlib": "matplotlib", "pyquaternion": "pyquaternion"}
# reported when missing; the check runs without them
OPTIONAL = {"spconv": "spconv (the build of your CUDA, e.g. spconv-cu120)", "nuscenes": "nuscenes-devkit",
            "tensorboardX": "tensorboardX"}
REPORTED_DISTRIBUTIONS = ("torch", "numpy", "scipy", "scikit-image", "numba", "pillow", "pyyaml", "tqdm",
                          "lightning", "torchmetrics", "matplotlib", "tensorboardX", "nuscenes-devkit",
                          "pyquaternion", "torchvision", "timm", "triton")
# share of --budget-s that each benchmark may use at most (the world's generation counts against the budget too)
SHARES = {"sparse": 0.25, "loss": 0.15, "step": 0.4}
MIN_LIMIT_S = 15.0  # a benchmark left with less than this is skipped rather than started


@dataclass(frozen=True)
class GpuCheckConfig(ConfigBase):
    """``slidr gpu-check``: device, time budget, data of ``bench step``."""

    device: Literal["auto", "cpu", "cuda"] = setting("cuda", help="device of the benchmarks (cpu: the path CI tests)")
    budget_s: float = setting(420.0, help="wall-time budget of the whole check, seconds; each benchmark is stopped "
                                          "at its share of it")
    tiny: bool = setting(False, help="shrink every benchmark (tests the path in seconds; measures nothing)")
    spconv: Literal["auto", "off"] = setting("auto", help="compare with spconv where it is installed and works "
                                                          "(off: the plain-PyTorch engine only)")
    world: Optional[str] = setting(None, help="folder of the synthetic world for bench step (default OUT/world; "
                                              "reused when there)")
    index: Optional[str] = setting(None, help="a prepared index with its SLIC superpixels for bench step, instead "
                                              "of the synthetic world")
    step_config: str = setting("pretrain/slidr_minkunet.yaml", help="pretraining config bench step times")
    batch_size: int = setting(4, help="scans per batch of bench step (and bench sparse's larger batch)")
    steps: int = setting(5, help="timed steps of bench step; timed repetitions of bench sparse and loss")

    def validate(self, where: str) -> None:
        positive(self.budget_s, subkey(where, "budget_s"))
        at_least(self.batch_size, 1, subkey(where, "batch_size"))
        at_least(self.steps, 1, subkey(where, "steps"))
        if self.world is not None and self.index is not None:
            key = subkey(where, "index")
            raise ConfigError(f"{key}: give either world or index, not both", key=key)


SETTINGS = CommandSettings(GpuCheckConfig, flags=[
    Flag("device"), Flag("budget_s"), Flag("tiny"), Flag("spconv"), Flag("world"), Flag("index"),
    Flag("step_config"), Flag("batch_size"), Flag("steps")], required=["--out"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)
    parser.add_argument("--out", metavar="DIR",
                        help="folder for gpu_check.json, gpu_check.md, bench/NAME.json and bench/NAME.log (required)")


@dataclass
class BenchRun:
    """One ``slidr bench`` process of the check."""

    key: str  # entry of the JSON's "benches"
    bench: str  # benchmark name
    options: list[str]
    skip_reason: Optional[str] = None
    entry: dict[str, Any] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    from slidr.bench import resolve_device
    from slidr.utils.io import atomic_write_text, write_json

    cfg: GpuCheckConfig = args.settings
    out = Path(args.out)
    start = time.monotonic()
    deadline = start + cfg.budget_s
    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    print(f"slidr gpu-check: device {device}, budget {cfg.budget_s:.0f} s{' (tiny)' if cfg.tiny else ''}; "
          f"results in {out}")

    environment = describe_environment(device)
    missing = environment.pop("missing_required")
    if missing:
        from slidr.errors import SlidrError

        raise SlidrError(f"missing packages the check needs: {', '.join(missing)}; install them without touching "
                         f"torch (pip install --no-deps WHEEL, or WHEELS=DIR scripts/gpu_check.sh)")
    spconv = check_spconv(device) if cfg.spconv == "auto" else _spconv_off()
    print(f"environment: torch {environment['torch']}, CUDA {environment['cuda']}, GPU {environment['gpu']}; "
          f"spconv: {spconv['status']}")
    for name in environment["missing_optional"]:
        print(f"optional package not installed: {name}")

    data = prepare_step_data(cfg, out)
    runs = plan_runs(cfg, device, spconv, data["index"])
    for bench_run in runs:
        key = bench_run.key
        limit = min(SHARES[key] * cfg.budget_s, deadline - time.monotonic())
        if bench_run.skip_reason is None and limit < MIN_LIMIT_S:
            bench_run.skip_reason = f"time budget spent ({cfg.budget_s:.0f} s in all)"
        if bench_run.skip_reason is not None:
            bench_run.entry = {"status": "skipped", "reason": bench_run.skip_reason}
            print(f"{key}: skipped: {bench_run.skip_reason}")
            continue
        bench_run.entry = run_bench(bench_run, device, out / "bench", limit)
        print(f"{key}: {bench_run.entry['status']} in {bench_run.entry['seconds']:.0f} s"
              + (f" ({bench_run.entry['reason']})" if bench_run.entry.get("reason") else ""))

    benches = {r.key: r.entry for r in runs}
    for bench_run in runs:
        if bench_run.entry["status"] == "ok":
            benches[bench_run.key].update(summarize(bench_run.bench, bench_run.entry["raw"]))
    result = {
        "schema": SCHEMA,
        "passed": all(entry["status"] == "ok" for entry in benches.values()),
        "device": str(device), "tiny": cfg.tiny, "budget_s": cfg.budget_s,
        "wall_s": round(time.monotonic() - start, 1),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "environment": environment, "spconv": spconv, "data": data, "benches": benches,
        "skipped": [f"{key}: {entry['reason']}" for key, entry in benches.items() if entry["status"] == "skipped"]
        + ([] if spconv["usable"] else [f"the spconv side of sparse and step: {spconv['status']}"]),
    }
    write_json(out / "gpu_check.json", result)
    markdown = summary_markdown(result)
    atomic_write_text(out / "gpu_check.md", markdown)
    print()
    print(markdown, end="")
    print(f"\nwrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {result['wall_s']:.0f} s")
    return 0 if result["passed"] else 1


# --- environment --------------------------------------------------------------------------------------------------


def describe_environment(device: Any) -> dict[str, Any]:
    """Versions of Python, torch, CUDA and the packages; the GPU; which needed or optional packages are missing."""
    import importlib.util

    import torch

    import slidr

    def importable(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": None, "gpu_memory_gb": None, "slidr": slidr.__version__, "slidr_path": str(Path(slidr.__file__).parent),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gb=round(properties.total_memory / 2**30, 1),
                    gpu_capability=f"{properties.major}.{properties.minor}")
    info["packages"] = {name: _version(name) for name in REPORTED_DISTRIBUTIONS}
    info["packages"].update({name: version for name, version in _spconv_distributions().items()})
    info["missing_required"] = [dist for module, dist in REQUIRED.items() if not importable(module)]
    info["missing_optional"] = [dist for module, dist in OPTIONAL.items() if not importable(module)]
    return info


def _version(distribution: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _spconv_distributions() -> dict[str, str]:
    """Installed spconv / cumm distributions (``spconv``, ``spconv-cu120``, ``cumm-cu120``, ...) and versions."""
    from importlib import metadata

    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().startswith(("spconv", "cumm")):
            found[name] = dist.version
    return found


def _spconv_off() -> dict[str, Any]:
    return {"installed": None, "version": None, "usable": False, "status": "not compared (--spconv off)",
            "max_rel_err": None}


def check_spconv(device: Any) -> dict[str, Any]:
    """Whether spconv is installed and gives the engine's results on ``device``.

    A submanifold, a strided and a transposed convolution (the U-Net's three kinds) run forward and backward on
    200 random sites through the plain-PyTorch engine and through spconv, with the same weights; spconv is
    ``usable`` when its output and weight gradients agree to 1e-3 (relative to the largest value). On the CPU it
    runs at one thread, the only setting where spconv's CPU build is correct.
    """
    import copy

    import torch
    from torch import nn

    from slidr.models.sparse import Conv3dDown, ConvTranspose3dUp, SparseTensor, SubmanifoldConv3d
    from slidr.models.sparse.spconv_backend import spconv_available, use_backend

    distributions = _spconv_distributions()
    version = next((v for name, v in distributions.items() if name.lower().startswith("spconv")), None)
    info: dict[str, Any] = {"installed": bool(version) or spconv_available(), "version": version, "usable": False,
                            "status": "not installed", "max_rel_err": None}
    if not spconv_available():
        if info["installed"]:
            info["status"] = f"spconv {version} is installed but does not import"
        return info
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        generator = torch.Generator().manual_seed(0)
        sites = torch.unique(torch.randint(0, 24, (400, 3), generator=generator), dim=0)[:200]
        coords = torch.cat((torch.zeros(len(sites), 1, dtype=torch.long), sites), 1).int().to(device)
        feats = torch.randn(len(sites), 4, generator=generator).to(device)
        engine = nn.Sequential(SubmanifoldConv3d(4, 8), Conv3dDown(8, 8), ConvTranspose3dUp(8, 8)).to(device)
        through_spconv = use_backend(copy.deepcopy(engine), "spconv")
        outputs, grads = [], []
        for network in (engine, through_spconv):
            out = network(SparseTensor(coords, feats)).feats
            out.square().sum().backward()
            outputs.append(out.detach())
            grads.append(torch.cat([cast(torch.Tensor, p.grad).flatten() for p in network.parameters()]))  # backward
        error = max(((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()
                    for a, b in ((outputs[0], outputs[1]), (grads[0], grads[1])))
        info["max_rel_err"] = error
        info["usable"] = error < 1e-3
        info["status"] = (f"spconv {version}: works on {device.type} (relative difference {error:.1e})"
                          if info["usable"] else
                          f"spconv {version}: wrong results on {device.type} (relative difference {error:.1e})")
    except Exception as error:  # noqa: BLE001 - any failure means spconv cannot be compared here
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        info["status"] = f"spconv {version}: fails on {device.type}: {type(error).__name__}: {first_line}"
    finally:
        torch.set_num_threads(threads)
    return info


# --- data of bench step ---------------------------------------------------------------------------------------------


def step_world_size(tiny: bool) -> dict[str, Any]:
    """The synthetic world bench step loads: nuScenes' image size (as the paper's crops), 8 keyframes."""
    if tiny:
        return {"scenes": 1, "frames": 2, "image_size": [160, 96]}
    return {"scenes": 2, "frames": 4, "image_size": [1600, 900]}


def prepare_step_data(cfg: GpuCheckConfig, out: Path) -> dict[str, Any]:
    """The index of bench step's data, with the superpixels its config needs: ``--index``, or a synthetic world."""
    from slidr.config import DemoConfig, PretrainConfig, load_config
    from slidr.demo import compute_superpixels, prepare_world

    start = time.monotonic()
    if cfg.index is not None:
        return {"kind": "index", "index": str(Path(cfg.index).resolve()), "world": None, "seconds": 0.0}
    size = step_world_size(cfg.tiny)
    world = Path(cfg.world) if cfg.world else out / "world"
    workers = max(1, min(os.cpu_count() or 1, 16))
    step_cfg = load_config(PretrainConfig, cfg.step_config)
    print(f"data: synthetic world {size['scenes']}x{size['frames']} keyframes at "
          f"{size['image_size'][0]}x{size['image_size'][1]} in {world}")
    demo_cfg = DemoConfig(world=str(world), scenes=size["scenes"], frames=size["frames"],
                          image_size=size["image_size"], seed=0, workers=workers, pretrain={"step": step_cfg})
    index = prepare_world(demo_cfg)
    compute_superpixels(index, [step_cfg], workers)
    return {"kind": "synthetic", "index": str(index), "world": {"folder": str(world.resolve()), **size},
            "seconds": round(time.monotonic() - start, 1)}


# --- the benchmarks ---------------------------------------------------------------------------------------------------


def plan_runs(cfg: GpuCheckConfig, device: Any, spconv: dict[str, Any], index: str) -> list[BenchRun]:
    """The ``slidr bench`` runs of the check, with their options (``--tiny``: the smallest that still runs)."""
    repeats = "1" if cfg.tiny else str(cfg.steps)
    if cfg.tiny:
        sparse = ["--network", "minkunet14_half", "--voxels", "300", "--batch-sizes", "1"]
        loss = ["--scans", "1", "--cameras", "2", "--height", "32", "--width", "48", "--points", "400",
                "--superpixels", "8"]
        shrink = ["trainer.batch_size=1", "backbone.name=minkunet14_half", "image.encoder=convnet_small",
                  "data.image_size=[64, 112]", "data.voxel.size=1.0", "data.voxel.azimuth_step_deg=4.0"]
        steps = "1"
    else:
        sparse = ["--network", "minkunet34", "--voxels", "30000", "--batch-sizes", "1", str(cfg.batch_size)]
        loss = ["--scans", str(cfg.batch_size)]
        shrink = [f"trainer.batch_size={cfg.batch_size}"]
        steps = str(cfg.steps)
    if device.type == "cpu":
        # the CPU path is CI's: one thread per process keeps parallel test workers from fighting over the cores
        # (and spconv's CPU build is correct at one thread only); CUDA kernels do not use torch's CPU threads
        sparse += ["--threads", "1"]
        loss += ["--threads", "1"]
        shrink.append("trainer.num_threads=1")
    step = ["--config", cfg.step_config, "--steps", steps, f"data.index={index}", "backbone.backend=torch", *shrink]
    if spconv["usable"]:
        step.append("--compare-spconv")
    else:
        sparse.append("--no-spconv")
    return [BenchRun("sparse", "sparse", [*sparse, "--repeats", repeats]),
            BenchRun("loss", "loss", [*loss, "--repeats", repeats]),
            BenchRun("step", "step", step)]


def run_bench(bench_run: BenchRun, device: Any, folder: Path, limit_s: float) -> dict[str, Any]:
    """Run one ``slidr bench`` in its own process (the same slidr sources), stopped after ``limit_s`` seconds."""
    import slidr

    folder.mkdir(parents=True, exist_ok=True)
    json_path, log_path = folder / f"{bench_run.key}.json", folder / f"{bench_run.key}.log"
    json_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "slidr.cli.main", "bench", bench_run.bench, "--device", device.type,
               "--json", str(json_path), *bench_run.options]
    env = dict(os.environ)
    source = str(Path(slidr.__file__).resolve().parents[1])  # the sources this process runs
    env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
    entry: dict[str, Any] = {"command": command[2:], "json": str(json_path), "log": str(log_path),
                             "limit_s": round(limit_s, 1)}
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            returncode = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the benchmark and anything it started
            process.wait()
            returncode = None
    entry["seconds"] = round(time.monotonic() - start, 1)
    if returncode is None:
        entry.update(status="timeout", reason=f"stopped after {limit_s:.0f} s (its share of the budget)")
    elif returncode != 0 or not json_path.is_file():
        entry.update(status="failed", reason=f"exit status {returncode}: {_last_line(log_path)}")
    else:
        entry.update(status="ok", raw=json.loads(json_path.read_text()))
    return entry


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


# --- summaries ------------------------------------------------------------------------------------------------------


def summarize(bench: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The common measures of one benchmark's JSON: samples/s, peak memory, time split, ratio to spconv."""
    if bench == "sparse":
        return _summarize_sparse(raw)
    if bench == "loss":
        return _summarize_loss(raw)
    return _summarize_step(raw)


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(1000 * seconds, 2)


def _summarize_sparse(raw: dict[str, Any]) -> dict[str, Any]:
    settings = raw.get("settings") or []
    if not settings:
        return {"samples_per_s": None, "peak_mb": None, "time_split_ms": {}, "ratio_to_spconv": None,
                "spconv": None, "details": {}}
    # the headline: the largest batch (the paper's 4 by default)
    head = max(settings, key=lambda s: (s.get("batch", 0), -s.get("threads", 0)))
    batch, ours, theirs = head["batch"], head.get("slidr_fwd_bwd_s"), head.get("spconv_fwd_bwd_s")
    split = {}
    if head.get("map_build_s") is not None and head.get("forward_s") is not None and ours is not None:
        split = {"maps": _ms(head["map_build_s"]), "forward": _ms(head["forward_s"]),
                 "backward_and_rest": _ms(max(0.0, ours - head["map_build_s"] - head["forward_s"]))}
    spconv = None
    if theirs:
        spconv = {"samples_per_s": round(batch / theirs, 3), "peak_mb": head.get("spconv_peak_mb"),
                  "fwd_bwd_ms": _ms(theirs), "max_rel_err": head.get("max_rel_err_vs_spconv")}
    per_batch = [{"batch": s["batch"], "voxels": s.get("voxels"), "slidr_ms": _ms(s.get("slidr_fwd_bwd_s")),
                  "spconv_ms": _ms(s.get("spconv_fwd_bwd_s")),
                  "ratio_to_spconv": _ratio(s.get("spconv_fwd_bwd_s"), s.get("slidr_fwd_bwd_s"))} for s in settings]
    return {"samples_per_s": round(batch / ours, 3) if ours else None, "peak_mb": head.get("slidr_peak_mb"),
            "time_split_ms": split, "ratio_to_spconv": _ratio(theirs, ours), "spconv": spconv,
            "details": {"network": raw.get("network"), "batch": batch, "voxels": head.get("voxels"),
                        "fwd_bwd_ms": _ms(ours), "per_batch": per_batch}}


def _summarize_loss(raw: dict[str, Any]) -> dict[str, Any]:
    scans = (raw.get("settings") or {}).get("scans")
    total, forward = raw.get("slidr_ms"), raw.get("slidr_forward_ms")
    # two medians measured apart: their difference can dip below 0 on a noisy machine at tiny sizes
    split = {} if total is None or forward is None else {"forward": forward,
                                                         "backward": round(max(0.0, total - forward), 2)}
    return {"samples_per_s": round(1000 * scans / total, 3) if scans and total else None,
            "peak_mb": raw.get("slidr_peak_mb"), "time_split_ms": split, "ratio_to_spconv": None, "spconv": None,
            "details": {"fwd_bwd_ms": total, "onehot_fwd_bwd_ms": raw.get("onehot_ms"),
                        "ratio_to_onehot": raw.get("speedup_fwd_bwd"), "onehot_peak_mb": raw.get("onehot_peak_mb"),
                        "abs_diff": raw.get("abs_diff"), "pairs": raw.get("pairs")}}


def _summarize_step(raw: dict[str, Any]) -> dict[str, Any]:
    from slidr.bench.step import STAGES

    def split(measures: dict[str, Any]) -> dict[str, Any]:
        return {stage.removesuffix("_ms"): measures.get(stage) for stage in STAGES}

    theirs = raw.get("spconv")
    spconv = None if not theirs else {
        "samples_per_s": theirs.get("scans_per_s"), "compute_samples_per_s": theirs.get("compute_scans_per_s"),
        "peak_mb": theirs.get("peak_mb"), "time_split_ms": split(theirs)}
    return {"samples_per_s": raw.get("scans_per_s"), "peak_mb": raw.get("peak_mb"), "time_split_ms": split(raw),
            "ratio_to_spconv": raw.get("ratio_to_spconv"), "spconv": spconv,
            "details": {"compute_samples_per_s": raw.get("compute_scans_per_s"), "step_ms": raw.get("step_ms"),
                        "compute_ms": raw.get("compute_ms"), "batch_size": raw.get("batch_size"),
                        "backbone": raw.get("backbone"), "backend": raw.get("backend"),
                        "image_encoder": raw.get("image_encoder"), "image_size": raw.get("image_size"),
                        "voxels_per_batch": raw.get("voxels_per_batch"),
                        "pairs_per_batch": raw.get("pairs_per_batch")}}


def _ratio(spconv_time: Optional[float], engine_time: Optional[float]) -> Optional[float]:
    return round(spconv_time / engine_time, 3) if spconv_time and engine_time else None


def summary_markdown(result: dict[str, Any]) -> str:
    """``gpu_check.md``: the environment in two lines and one table row per benchmark."""
    env, spconv = result["environment"], result["spconv"]
    lines = [f"# slidr gpu-check ({'passed' if result['passed'] else 'FAILED'})", "",
             f"- device: {result['device']}"
             + (f" ({env['gpu']}, {env['gpu_memory_gb']} GB)" if env.get("gpu") else "")
             + f"; torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, Python {env['python']}",
             f"- spconv: {spconv['status']}",
             f"- {result['wall_s']:.0f} s of a {result['budget_s']:.0f} s budget"
             + ("; --tiny: sizes shrunk to test the path, the numbers mean nothing" if result["tiny"] else ""), "",
             "| benchmark | status | samples/s | peak MB | time split (ms) | ratio to spconv |",
             "|---|---|---|---|---|---|"]
    for key, entry in result["benches"].items():
        if entry["status"] != "ok":
            lines.append(f"| {key} | {entry['status']}: {entry.get('reason', '')} | | | | |")
            continue
        split = ", ".join(f"{stage} {_cell(ms)}" for stage, ms in entry["time_split_ms"].items())
        lines.append(f"| {key} | ok ({entry['seconds']:.0f} s) | {_cell(entry['samples_per_s'])} | "
                     f"{_cell(entry['peak_mb'])} | {split} | {_cell(entry['ratio_to_spconv'])} |")
    lines += ["", "samples/s: scans per second (step: every stage, data loading in one process included; "
              "details.compute_samples_per_s leaves it out). Ratio to spconv: spconv's time / the plain-PyTorch "
              "engine's (above 1: the engine is faster).", ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
