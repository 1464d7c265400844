"""Benchmarks: ``slidr bench <name> [--json FILE]``. Each module here is one benchmark and defines:

- ``NAME`` and ``HELP``;
- ``SETTINGS``: a :class:`slidr.cli.settings.CommandSettings` over its frozen settings class (sizes,
  repetitions; declared in the module), whose ``add_arguments(parser)`` the module's ``add_arguments`` calls;
- ``run(args) -> BenchResult``: measures with ``args.settings``; ``rows`` is printed as a table, ``data`` is
  written as JSON.

Every benchmark takes ``--device {auto,cpu,cuda}``: its settings class derives from :class:`DeviceSetting` and
lists :data:`DEVICE_FLAG` (``bench step``, whose settings are a ``PretrainConfig``, adds the same option with
:func:`add_device_option`); :func:`resolve_device` turns it into a ``torch.device`` and refuses CUDA in one line
where it is not available. Benchmarks of CPU work (data loading, superpixels, ray casting) accept the option, run
on the CPU and say so (:func:`cpu_only_notes`). Timing (:func:`timed`, :func:`time_call`) synchronises CUDA around
each timed call; memory (:class:`MemoryPeak`, :func:`peak_memory_mb`) is CUDA's allocator peak on a GPU, the
process's peak resident set on the CPU.

Ratios are measured side by side in one run: this machine is shared and noisy.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from slidr.cli.settings import Flag
from slidr.config import ConfigBase, setting
from slidr.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "where the benchmark runs: cpu, cuda, or auto (cuda when available)"


@dataclass
class BenchResult:
    """What a benchmark measured: table rows for people, a JSON object for machines."""

    rows: list[dict[str, Any]]
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # further tables printed after ``rows``, each under its title
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceSetting(ConfigBase):
    """Base of a benchmark's settings class: the ``device`` setting every benchmark has (option :data:`DEVICE_FLAG`).

    A benchmark's settings subclass it (``class LossBenchConfig(DeviceSetting)``), list :data:`DEVICE_FLAG` among
    its flags and call :func:`resolve_device` on ``cfg.device``. ``slidr bench step``, whose settings are a
    ``PretrainConfig``, adds the same option with :func:`add_device_option`.
    """

    device: Literal["auto", "cpu", "cuda"] = setting("auto", help=DEVICE_HELP)


DEVICE_FLAG = Flag("device")


def add_device_option(parser: Any) -> None:
    """``--device {auto,cpu,cuda}`` as a plain option (for a benchmark whose settings class is not its own)."""
    parser.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP + " (default: auto)")


def resolve_device(name: str) -> torch.device:
    """The device a benchmark runs on: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available, else CPU).

    Raises
    ------
    UsageError
        ``name`` is not one of :data:`DEVICES`, or CUDA is asked for and this torch cannot use it (one line
        saying why: a CPU build of torch, or no visible device).
    """
    import torch

    if name not in DEVICES:
        raise UsageError(f"--device {name}: not one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = ("this torch is a CPU build" if torch.version.cuda is None
               else f"no CUDA device is visible to this torch (built for CUDA {torch.version.cuda})")
        raise UsageError(f"--device cuda: CUDA is not available: {why} (torch {torch.__version__}); "
                         f"use --device cpu or auto")
    return torch.device(name)


def cpu_only_notes(requested: str, reason: str) -> list[str]:
    """The note of a benchmark that runs on the CPU whatever ``--device`` says, when that matters.

    Nothing when ``cpu`` was asked for, or ``auto`` on a machine without CUDA; otherwise one line: the benchmark
    measures CPU work (``reason``), so it runs on the CPU and its JSON says ``"device": "cpu"``.
    """
    import torch

    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return []
    return [f"runs on the CPU whatever --device says (--device {requested}): {reason}"]


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the device's queued work: a no-op on CPU. ``None``: CUDA's, if this process has initialised it."""
    import torch

    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    elif torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[Any, float]:
    """``(fn(), seconds)``: wall time of one call, the device synchronised before and after (CUDA runs
    asynchronously: without it the time would be that of queueing the kernels)."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1,
              device: torch.device | str | None = None) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs.

    Each run is synchronised on ``device`` (see :func:`timed`; ``None``: CUDA, if initialised in this process).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        times.append(timed(fn, device)[1])
    return statistics.median(times)


class MemoryPeak:
    """Peak memory in use while a ``with`` block runs, on one device.

    CUDA: the caching allocator's statistics (``torch.cuda.reset_peak_memory_stats`` on entry,
    ``max_memory_allocated`` on exit): memory held by tensors, not what the allocator keeps cached. CPU (Linux):
    the process's peak resident set (``VmHWM``), reset through ``/proc/self/clear_refs`` on entry, which also
    counts torch's and numpy's allocations that ``tracemalloc`` cannot see.

    Attributes, set on exit: ``start_mb`` (in use on entry), ``peak_mb`` (the peak), ``extra_mb`` (peak above
    the start, >= 0).
    """

    def __init__(self, device: torch.device | str | None = None):
        import torch

        if device is None:  # as synchronize(None): CUDA when this process uses it
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            device = torch.device("cuda" if cuda else "cpu")
        self.device = torch.device(device)
        self.start_mb = self.peak_mb = self.extra_mb = 0.0

    def __enter__(self) -> MemoryPeak:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.start_mb = _resident_mb("VmRSS")
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = _resident_mb("VmHWM")
        self.extra_mb = max(0.0, self.peak_mb - self.start_mb)


def peak_memory_mb(fn: Callable[[], Any], device: torch.device | str | None = None) -> float:
    """Extra memory (MB) that ``fn()`` needs at its peak on ``device``, above what was in use before the call
    (see :class:`MemoryPeak`; ``None``: CUDA if this process has initialised it, else the CPU)."""
    with MemoryPeak(device) as peak:
        fn()
    return peak.extra_mb


def _resident_mb(field_name: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field_name} not found in /proc/self/status")


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table with one column per key of the first row."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    for row in rows[1:]:
        columns += [key for key in row if key not in columns]
    cells = [[_format_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(cell[i]) for cell in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
