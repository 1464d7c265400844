"""Benchmarks: ``slidr bench <name> [--json FILE]``. Each module here is one benchmark and defines:

- ``NAME`` and ``HELP``;
- ``add_arguments(parser)``: its own options (sizes, repetitions);
- ``run(args) -> BenchResult``: measures; ``rows`` is printed as a table, ``data`` is written as JSON.

Ratios are measured side by side in one run: this machine is shared and noisy.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class BenchResult:
    """What a benchmark measured: table rows for people, a JSON object for machines."""

    rows: list[dict[str, Any]]
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # further tables printed after ``rows``, each under its title
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mb(fn: Callable[[], Any]) -> float:
    """Extra memory (MB) that ``fn()`` needs at its peak, above what was in use before the call.

    On CUDA: the allocator's peak statistics. On CPU (Linux): the process's peak resident set (``VmHWM``),
    reset through ``/proc/self/clear_refs`` before the call, which also counts torch's and numpy's
    allocations that ``tracemalloc`` cannot see.
    """
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = _resident_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    fn()
    return max(0.0, _resident_mb("VmHWM") - before)


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
