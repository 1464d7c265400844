"""Benchmarks on a chosen device and the GPU check: ``--device`` on every benchmark, CUDA-correct timing and
memory (checked against a stand-in for ``torch.cuda``, as the machines running this suite have no GPU), and the
whole ``scripts/gpu_check.sh`` path on the CPU with tiny sizes, without the optional packages a GPU machine may lack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import slidr.bench as bench
from slidr.bench import DEVICES, MemoryPeak, cpu_only_notes, resolve_device, time_call, timed
from slidr.cli.bench import bench_modules
from slidr.cli.main import build_parser, main
from slidr.errors import SlidrError

ROOT = Path(__file__).resolve().parents[1]
CPU_ONLY = {"data", "superpixels", "synth"}


# --- the device option ----------------------------------------------------------------------------------------------


def _subparser(parser, *names):
    for name in names:
        action = next(a for a in parser._actions if getattr(a, "choices", None) and name in a.choices)
        parser = action.choices[name]
    return parser


def test_every_benchmark_takes_the_same_device_option():
    parser = build_parser()
    names = [module.NAME for module in bench_modules()]
    assert {"data", "loss", "sparse", "step", "superpixels", "synth"} <= set(names)
    for name in names:
        option = next(a for a in _subparser(parser, "bench", name)._actions if "--device" in a.option_strings)
        assert tuple(option.choices) == DEVICES, name


@pytest.mark.parametrize("name", sorted(m.NAME for m in bench_modules() if m.NAME != "step"))
def test_device_is_a_typed_setting(name, capsys):
    assert main(["bench", name, "--device", "cuda", "--print-config"]) == 0
    assert "device: cuda" in capsys.readouterr().out
    assert main(["bench", name, "device=tpu", "--print-config"]) == 2
    assert "device: 'tpu' is not one of 'auto', 'cpu', 'cuda'" in capsys.readouterr().err


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SlidrError, match="--device tpu: not one of auto, cpu, cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_cuda_without_cuda_is_one_clear_line():
    with pytest.raises(SlidrError) as error:
        resolve_device("cuda")
    message = str(error.value)
    assert "\n" not in message and message.startswith("--device cuda: CUDA is not available")
    assert "use --device cpu" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
@pytest.mark.parametrize("argv", [["bench", "loss"], ["bench", "sparse"]])
def test_gpu_benchmarks_refuse_cuda_before_any_work(argv, capsys):
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: CUDA is not available" in err[0], err


def test_cpu_only_benchmarks_say_they_run_on_the_cpu(monkeypatch):
    assert cpu_only_notes("cpu", "reason") == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cpu_only_notes("auto", "reason") == []
    (note,) = cpu_only_notes("cuda", "numba kernels")
    assert "runs on the CPU" in note and "--device cuda" in note and "numba kernels" in note
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert len(cpu_only_notes("auto", "numba kernels")) == 1


# --- CUDA-correct timing and memory, against a stand-in for torch.cuda ----------------------------------------------


class FakeCuda:
    """Records the calls the timing and memory helpers make to ``torch.cuda``; allocations are ``allocate(mb)``."""

    def __init__(self):
        self.calls: list[str] = []
        self.allocated = 100 * 2**20
        self.peak = self.allocated

    def install(self, monkeypatch):
        for name in ("synchronize", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated",
                     "is_available", "is_initialized"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def synchronize(self, device=None):
        self.calls.append("sync")

    def reset_peak_memory_stats(self, device=None):
        self.calls.append("reset")
        self.peak = self.allocated

    def memory_allocated(self, device=None):
        return self.allocated

    def max_memory_allocated(self, device=None):
        return self.peak

    def allocate(self, mb, keep=False):
        self.calls.append("work")
        self.peak = max(self.peak, self.allocated + mb * 2**20)
        if keep:
            self.allocated += mb * 2**20


def test_timing_waits_for_cuda_before_and_after_the_call(monkeypatch):
    fake = FakeCuda()
    fake.install(monkeypatch)
    result, seconds = timed(lambda: fake.allocate(1) or 7, "cuda")
    assert result == 7 and seconds >= 0
    assert fake.calls == ["sync", "work", "sync"]
    fake.calls.clear()
    time_call(lambda: fake.allocate(1), repeats=2, warmup=1, device=torch.device("cuda"))
    assert fake.calls == ["work", "sync", "work", "sync", "sync", "work", "sync"]
    fake.calls.clear()
    timed(lambda: fake.allocate(1), "cpu")  # a CPU benchmark never waits for the GPU
    assert fake.calls == ["work"]


def test_cuda_peak_memory_is_the_allocator_peak_during_the_block(monkeypatch):
    fake = FakeCuda()
    fake.install(monkeypatch)
    fake.peak = 10_000 * 2**20  # an earlier peak must not count
    with MemoryPeak("cuda") as memory:
        fake.allocate(300)
        fake.allocate(50, keep=True)
    assert fake.calls == ["sync", "reset", "work", "work", "sync"]
    assert memory.start_mb == 100 and memory.peak_mb == 400 and memory.extra_mb == 300
    assert bench.peak_memory_mb(lambda: fake.allocate(20), "cuda") == 20


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_cpu_peak_memory_sees_numpy_allocations():
    with MemoryPeak("cpu") as memory:
        block = np.ones(200 * 2**20 // 8)  # 200 MB, written so that its pages are resident
        del block
    assert 180 <= memory.extra_mb <= 400, memory.extra_mb
    assert memory.peak_mb >= memory.start_mb + memory.extra_mb - 1


# --- bench step: the engine and spconv side by side ---------------------------------------------------------------


def test_backend_switch_gives_spconv_the_engines_results():
    from slidr.bench.step import backend_switch
    from slidr.config import BackboneConfig
    from slidr.models.sparse import SparseTensor
    from slidr.models.sparse.spconv_backend import spconv_available
    from slidr.models.unet import build_backbone

    if not spconv_available():
        pytest.skip("spconv is not installed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # spconv's CPU build is correct at one thread only
    try:
        torch.manual_seed(0)
        model = build_backbone(BackboneConfig(name="minkunet14_half", out_channels=8)).eval()
        sites = torch.unique(torch.randint(0, 40, (900, 3)), dim=0)[:600]
        coords = torch.cat((torch.zeros(len(sites), 1, dtype=torch.long), sites), 1).int()
        feats = torch.rand(len(sites), 1)
        use = backend_switch(model, ["torch", "spconv"])
        outputs = {}
        for backend in ("torch", "spconv", "torch"):
            use(backend)
            with torch.no_grad():
                outputs.setdefault(backend, []).append(model(SparseTensor(coords, feats)))
        layer = next(m for m in model.modules() if getattr(m, "kernel_size", 1) > 1)
        use("spconv")
        impl = layer.backend_impl
        use("torch")
        use("spconv")
        assert layer.backend_impl is impl  # switching keeps each backend's state: nothing rebuilt in timed loops
    finally:
        torch.set_num_threads(threads)
    first, again = outputs["torch"]
    assert torch.equal(first, again)
    scale = first.abs().max()
    assert (outputs["spconv"][0] - first).abs().max() <= 1e-4 * scale


# --- the GPU check ------------------------------------------------------------------------------------------------


BLOCKER = textwrap.dedent('''
    # test_gpu_check: the packages a GPU machine may lack cannot be imported here
    import os
    import sys

    BLOCKED = set(os.environ.get("SLIDR_TEST_BLOCK", "").split(","))


    class _Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None


    sys.meta_path.insert(0, _Blocker())
''')


@pytest.mark.slow  # ~20 s of CPU: world generation and four benchmark processes
def test_gpu_check_script_on_cpu(tmp_path):
    """``scripts/gpu_check.sh --device cpu --tiny``: every benchmark runs and the JSON holds every key, with
    nuscenes-devkit and tensorboardX impossible to import (a GPU machine may lack them)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_INSTALL": "none",
           "SLIDR_TEST_BLOCK": "nuscenes,tensorboardX",
           "PYTHONPATH": os.pathsep.join([str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny",
                             "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())

    assert {"schema", "passed", "device", "tiny", "budget_s", "wall_s", "finished", "environment", "spconv", "data",
            "benches", "skipped"} <= set(report)
    assert report["schema"] == "slidr-gpu-check/1" and report["passed"] is True
    assert report["device"] == "cpu" and report["tiny"] is True and report["wall_s"] < report["budget_s"]
    environment = report["environment"]
    assert {"python", "platform", "cpu_count", "torch", "cuda", "cudnn", "gpu", "gpu_memory_gb", "slidr",
            "slidr_path", "packages", "missing_optional"} <= set(environment)
    assert environment["torch"] == torch.__version__
    assert Path(environment["slidr_path"]) == ROOT / "src" / "slidr"  # the checkout's sources ran
    assert {"nuscenes-devkit", "tensorboardX"} <= set(environment["missing_optional"])
    spconv = report["spconv"]
    assert {"installed", "version", "usable", "status", "max_rel_err"} <= set(spconv)
    assert report["data"]["kind"] == "synthetic" and Path(report["data"]["index"]).is_file()

    assert set(report["benches"]) == {"sparse", "loss", "step"}
    stages = {"sparse": {"maps", "forward", "backward_and_rest"}, "loss": {"forward", "backward"},
              "step": {"data", "image", "points", "loss", "backward", "optimizer"}}
    for name, entry in report["benches"].items():
        assert entry["status"] == "ok", (name, entry)
        assert {"status", "seconds", "limit_s", "command", "samples_per_s", "peak_mb", "time_split_ms",
                "ratio_to_spconv", "spconv", "details", "raw"} <= set(entry), name
        assert entry["samples_per_s"] > 0 and entry["peak_mb"] >= 0, name
        assert set(entry["time_split_ms"]) == stages[name]
        assert all(value >= 0 for value in entry["time_split_ms"].values()), name
        assert entry["raw"]["device"] == "cpu"
        assert (out / "bench" / f"{name}.json").is_file() and (out / "bench" / f"{name}.log").is_file()
    step = report["benches"]["step"]
    assert step["details"]["backbone"] == "minkunet14_half" and step["details"]["batch_size"] == 1
    assert step["raw"]["image_encoder"] == "convnet_small"  # the paper's config, shrunk by --tiny overrides
    compute = sum(value for stage, value in step["time_split_ms"].items() if stage != "data")
    assert step["details"]["compute_ms"] == pytest.approx(compute, rel=1e-3, abs=0.05)
    for name in ("sparse", "step"):
        entry = report["benches"][name]
        if spconv["usable"]:
            assert entry["ratio_to_spconv"] > 0 and entry["spconv"]["samples_per_s"] > 0, name
        else:
            assert entry["ratio_to_spconv"] is None and entry["spconv"] is None, name
    if spconv["usable"]:  # the ratio is spconv's time over the engine's
        raw = report["benches"]["step"]["raw"]
        assert step["ratio_to_spconv"] == pytest.approx(raw["spconv"]["compute_ms"] / raw["compute_ms"], rel=1e-2)
    markdown = (out / "gpu_check.md").read_text()
    assert "| sparse | ok" in markdown and "| loss | ok" in markdown and "| step | ok" in markdown


def test_gpu_check_records_failures_and_timeouts(tmp_path):
    from slidr.cli.gpu_check import BenchRun, run_bench

    failing = run_bench(BenchRun("loss", "loss", ["--repeats", "0"]), torch.device("cpu"), tmp_path, 120)
    assert failing["status"] == "failed" and "--repeats 0" in failing["reason"]
    assert "raw" not in failing and (tmp_path / "loss.log").is_file()
    hung = run_bench(BenchRun("sparse", "sparse", ["--voxels", "30000", "--repeats", "50"]), torch.device("cpu"),
                     tmp_path, 1.0)
    assert hung["status"] == "timeout" and hung["seconds"] < 30


def test_gpu_check_names_every_missing_package(tmp_path, monkeypatch, capsys):
    import slidr.cli.gpu_check as gpu_check

    monkeypatch.setattr(gpu_check, "REQUIRED", {**gpu_check.REQUIRED, "slidr_absent_a": "absent-a",
                                                "slidr_absent_b": "absent-b"})
    assert main(["gpu-check", "--device", "cpu", "--out", str(tmp_path)]) == 1  # the environment, not the usage
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent-a, absent-b" in err[0] and "--no-deps" in err[0], err
