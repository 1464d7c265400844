"""The experiment runner: tables of cells, each cell one or more runs over seeds, resumable, summarised.

One implementation of what every table command needs (``slidr reproduce``, ``slidr ablate``, ``slidr
detect-table``):

- a :class:`Cell` is one measured value of a table for one seed: a folder and a function ``run(folder, resume)``
  returning the cell's summary (a dict). :func:`cell_state` tells a finished cell (its summary file), an
  interrupted one (something written, no summary: a checkpoint, a finished pretraining) and a new one;
  :func:`run_cells` runs them in order, reading finished cells back, resuming interrupted ones and logging one
  line per cell (``n/N name: starting | resuming | read back``, then its time);
- :func:`statistics` gives mean and (sample) standard deviation over seeds, :func:`measured_text` writes
  ``mean ± std``;
- :func:`write_table_files` writes a table's markdown, JSON and PNG chart atomically; :func:`grouped_bar_chart`
  draws measured means with their standard deviations beside reference values (the paper's numbers);
- the steps cells are made of (:func:`prepare_nuscenes_world`, :func:`compute_superpixels`, :func:`pretrain`,
  :func:`downstream`): each reuses a finished run and resumes an interrupted one, so a cell interrupted between
  two steps loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from slidr.config import DownstreamConfig, PretrainConfig
from slidr.errors import ConfigError
from slidr.utils.io import atomic_write_text, save_figure, write_json
from slidr.utils.log import logger


@dataclass(frozen=True)
class SmokeWorld:
    """The size of the tiny synthetic world of ``--smoke`` runs (reproduce, ablate, detect-table): it checks the
    whole chain; its numbers mean nothing."""

    scenes: int = 2
    frames: int = 3
    image_size: tuple[int, int] = (320, 180)
    seed: int = 7


SMOKE_WORLD = SmokeWorld()


def smoke_world(folder: str | Path, fmt: str = "nuscenes") -> Path:
    """The tiny world of :data:`SMOKE_WORLD` in layout ``fmt`` (``slidr synth --format``) in ``folder``, generated
    on first use and reused after."""
    from slidr.data.synth import generate_world

    folder = Path(folder)
    if not (folder / "synth_summary.json").is_file():
        generate_world(folder, scenes=SMOKE_WORLD.scenes, frames=SMOKE_WORLD.frames,
                       image_size=SMOKE_WORLD.image_size, seed=SMOKE_WORLD.seed, workers=1, fmt=fmt,
                       show_progress=False, previews=False)
    return folder

SUMMARY_NAME = "summary.json"
INTERRUPTED = "an interrupted run"


# --------------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One run of a table (one seed of one measured value).

    ``run(folder, resume) -> summary`` does the work into ``folder`` and returns the summary; the runner writes it
    to ``folder/summary_name`` unless ``run`` did (the detection runs write their own).
    """

    name: str
    folder: Path
    run: Callable[[Path, bool], dict]
    summary_name: str = SUMMARY_NAME


def cell_state(folder: str | Path, summary_name: str = SUMMARY_NAME) -> str:
    """``done`` (the summary file exists), ``interrupted`` (the folder holds something else: a checkpoint, a
    finished step) or ``new`` (absent or empty)."""
    folder = Path(folder)
    if (folder / summary_name).is_file():
        return "done"
    if folder.is_dir() and any(folder.iterdir()):
        return "interrupted"
    return "new"


def run_cells(cells: Sequence[Cell], command: str) -> dict[str, dict]:
    """Run (or read back) every cell in order; returns cell name -> summary.

    A finished cell is read back, an interrupted one resumed (``run(folder, resume=True)``), a new one started.
    One log line per cell before it (``COMMAND n/N NAME: starting``) and one after (its wall time).

    Raises
    ------
    ConfigError
        Two cells share a name or a folder (one would read the other's result back).
    """
    names = [cell.name for cell in cells]
    folders = [str(cell.folder.resolve()) for cell in cells]
    for values, what in ((names, "name"), (folders, "folder")):
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise ConfigError(f"{command}: several cells share the {what} {', '.join(repeated)}")
    summaries: dict[str, dict] = {}
    for number, cell in enumerate(cells, 1):
        state = cell_state(cell.folder, cell.summary_name)
        if state == "done":
            summaries[cell.name] = json.loads((cell.folder / cell.summary_name).read_text())
            logger.info("%s %d/%d %s: finished earlier, read back", command, number, len(cells), cell.name)
            continue
        logger.info("%s %d/%d %s: %s", command, number, len(cells), cell.name,
                    "resuming" if state == "interrupted" else "starting")
        began = time.perf_counter()
        summary = cell.run(cell.folder, state == "interrupted")
        elapsed = time.perf_counter() - began
        if summary and not (cell.folder / cell.summary_name).is_file():
            summary = {**summary, "cell_wall_s": round(elapsed, 1)}
            write_json(cell.folder / cell.summary_name, summary)
        summaries[cell.name] = summary
        logger.info("%s %d/%d %s: done in %.0f s", command, number, len(cells), cell.name, elapsed)
    return summaries


# --------------------------------------------------------------------------------------------------------------
# Statistics and text
# --------------------------------------------------------------------------------------------------------------
def statistics(values: Sequence[Optional[float]]) -> dict:
    """``{"values": values, "mean": mean of the present ones | None, "std": sample std (ddof 1) | None}``; the
    standard deviation needs two values at least."""
    present = [float(v) for v in values if v is not None]
    return {"values": list(values), "mean": float(np.mean(present)) if present else None,
            "std": float(np.std(present, ddof=1)) if len(present) > 1 else None}


def measured_text(stats: Mapping, digits: int = 1) -> str:
    """``mean ± std`` (``mean`` alone for one seed, ``n/a`` for none)."""
    if stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean']:.{digits}f}" + (f" ± {stats['std']:.{digits}f}" if stats.get("std") is not None else "")


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------
def write_table_files(out: str | Path, stem: str, markdown: str, data: Any,
                      chart: Callable[[Path], Path]) -> dict[str, Path]:
    """Write ``STEM.md`` (``markdown``), ``STEM.json`` (``data``) and ``STEM.png`` (``chart(path)``) into ``out``
    atomically; returns their paths (keys ``markdown``, ``json``, ``chart``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / f"{stem}.md", "json": out / f"{stem}.json", "chart": out / f"{stem}.png"}
    atomic_write_text(paths["markdown"], markdown)
    write_json(paths["json"], data)
    chart(paths["chart"])
    return paths


def grouped_bar_chart(path: str | Path, groups: Sequence[str], series: Mapping[str, Sequence[Mapping]],
                      title: str, ylabel: str = "mIoU %",
                      references: Optional[Mapping[str, Sequence[Optional[float]]]] = None,
                      reference_label: str = "paper") -> Path:
    """A bar per series in each group: the mean with the standard deviation as error bar; a reference value
    (e.g. the paper's) drawn as a black tick over its bar.

    Parameters
    ----------
    groups : the x-axis groups (G,).
    series : label -> (G,) statistics dicts (``mean``, ``std``; None = not measured).
    references : label -> (G,) reference values or None.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(series))
    positions = np.arange(len(groups))
    figure, axis = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(series)) ** 0.5 + 3), 4), dpi=110)
    labelled = False
    for i, (label, stats) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        means = [np.nan if s.get("mean") is None else s["mean"] for s in stats]
        errors = [0.0 if s.get("std") is None else s["std"] for s in stats]
        axis.bar(positions + offset, means, width, yerr=errors, capsize=3, label=label)
        for x, value in zip(positions + offset, (references or {}).get(label, [None] * len(groups))):
            if value is not None:
                axis.plot([x - width / 2, x + width / 2], [value, value], "k-", linewidth=2,
                          label=None if labelled else reference_label)
                labelled = True
    axis.set_xticks(positions)
    axis.set_xticklabels(groups, fontsize=8)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


# --------------------------------------------------------------------------------------------------------------
# Steps of a cell
# --------------------------------------------------------------------------------------------------------------
def prepare_nuscenes_world(world: str | Path, version: Optional[str] = None) -> Path:
    """The index of a nuScenes-layout dataroot (a synthetic world or real nuScenes): ``world/index.npz``, written
    by :func:`slidr.data.prepare_nuscenes.prepare_nuscenes` if absent; returns its path."""
    from slidr.data.prepare_nuscenes import prepare_nuscenes

    world = Path(world)
    index_path = world / "index.npz"
    if index_path.is_file():
        return index_path.resolve()
    if version is None:
        summary = world / "synth_summary.json"
        version = json.loads(summary.read_text()).get("version", "v1.0-trainval") if summary.is_file() \
            else "v1.0-trainval"
    prepare_nuscenes(world, version, index_path)
    return index_path.resolve()


def compute_superpixels(index_path: Path, pretrain_cfgs: Iterable[PretrainConfig], workers: int) -> dict[str, Any]:
    """The superpixels the pretraining configs need (resumable: finished images are skipped); returns per variant
    folder the images' count and segment statistics."""
    from slidr.data.index import load_index
    from slidr.data.superpixels import compute_index_superpixels, image_jobs, legacy_layout_is_unique, superpixel_dir

    index = load_index(index_path)
    reports = {}
    for pretrain_cfg in pretrain_cfgs:
        sp = pretrain_cfg.data.superpixels
        if sp.method in ("none", "masks") or not pretrain_cfg.loss.use_superpixels:
            continue  # masks are imported by `slidr superpixels --method masks`, never computed here
        folder = superpixel_dir(index_path, sp.method, sp.n_segments, sp.root)
        if folder.name in reports:
            continue
        jobs = image_jobs(index.samples, index.root, pretrain_cfg.data.cameras)
        reports[folder.name] = compute_index_superpixels(jobs, folder, sp.method, sp.n_segments, workers,
                                                         convert_legacy=legacy_layout_is_unique(index.format))
    return {name: {key: report.get(key) for key in ("images", "computed", "segments_min", "segments_median",
                                                    "segments_max")} for name, report in reports.items()}


def pretrain(cfg: PretrainConfig, run_dir: Path, what: str = INTERRUPTED) -> tuple[Path, dict]:
    """Pretrain into ``run_dir`` unless it already holds the exported file (resuming an interrupted run); returns
    the exported file and the run's summary."""
    from slidr.engine.checkpoint import CHECKPOINT_DIR, EXPORT_NAME, latest_checkpoint
    from slidr.methods.pretrain import run_pretraining

    exported, summary_path = run_dir / EXPORT_NAME, run_dir / "summary.json"
    if exported.is_file() and summary_path.is_file():
        logger.info("reusing %s", exported)
    else:
        with reused_run(run_dir, what):
            run_pretraining(cfg, run_dir, resume=latest_checkpoint(run_dir / CHECKPOINT_DIR) is not None)
    return exported, json.loads(summary_path.read_text())


def downstream(cfg: DownstreamConfig, run_dir: Path, what: str = INTERRUPTED) -> dict:
    """A probe / fine-tuning run into ``run_dir`` unless it already holds its evaluation (resuming an interrupted
    run); returns the evaluation."""
    from slidr.engine.checkpoint import CHECKPOINT_DIR, latest_checkpoint
    from slidr.methods.downstream import run_downstream

    evaluation_path = run_dir / "evaluation.json"
    if evaluation_path.is_file() and (run_dir / "summary.json").is_file():
        logger.info("reusing %s", evaluation_path)
        return json.loads(evaluation_path.read_text())
    resume = latest_checkpoint(run_dir / CHECKPOINT_DIR) is not None
    with reused_run(run_dir, what):
        return run_downstream(cfg.with_resolved_epochs(), run_dir, resume=resume)["evaluation"]


@contextlib.contextmanager
def reused_run(run_dir: Path, what: str = INTERRUPTED) -> Iterator[None]:
    """An interrupted run is continued only with its own settings: say how to start it again (``what`` names the
    run in the message)."""
    from slidr.engine.checkpoint import ResumeConflict

    try:
        yield
    except ResumeConflict as error:
        raise ConfigError(f"{run_dir} holds {what} with other settings (" + ", ".join(
            f"{key}: {old!r} there, {new!r} now" for key, (old, new) in error.changes.items()) + f"); delete {run_dir} "
            "to start it again with the new ones", key=error.key) from None
