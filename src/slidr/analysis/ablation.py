"""``slidr ablate``: the paper's ablations at demo scale on a synthetic world, one table over seeds.

Every cell of :class:`slidr.config.AblationConfig` (packaged ``ablation/demo_cpu.yaml``) is the base pretraining
config with the cell's dotted overrides (so a cell follows whatever teacher and settings the base names), pretrained
on ``train_split`` and linearly probed (``probe``) on ``train_split``, scored on ``eval_split``; a ``random_init``
cell probes an untrained network. Each seed ``s`` sets ``trainer.seed = s`` of both runs. Runs live in
``OUT/runs/<cell>/seed<s>/{pretrain,probe}``; the runner (:mod:`slidr.analysis.runner`) reads finished cells back and
resumes interrupted ones. The table (``ablation.md``, ``ablation.json``, ``ablation.png``) has one section per axis
(teacher, superpixels, method); the method section carries the methods' published linear-probing mIoU on nuScenes
beside the synthetic numbers, which it labels as not comparable.

Honesty: nothing is chosen on ``eval_split``; the probe's settings are the demo's (chosen on parametrizing /
verifying).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from slidr.analysis.runner import (
    Cell,
    cell_state,
    compute_superpixels,
    downstream,
    grouped_bar_chart,
    measured_text,
    prepare_nuscenes_world,
    pretrain,
    run_cells,
    statistics,
    write_table_files,
)
from slidr.analysis.runner import (
    smoke_world as runner_smoke_world,
)
from slidr.config import AblationConfig, DownstreamConfig, PretrainConfig, with_changes, with_overrides
from slidr.errors import ConfigError, DataError
from slidr.utils.log import logger

AXES = ("teacher", "superpixels", "method")
AXIS_TITLES = {"teacher": "Image teacher", "superpixels": "Superpixels", "method": "Distillation method"}
CELL_SUMMARY = "cell.json"
STEM = "ablation"
# --smoke: a tiny world and a few steps per run, to check that every part runs (numbers mean nothing)
SMOKE_PRETRAIN = ("trainer.epochs=1", "trainer.max_steps=2", "trainer.batch_size=2", "trainer.log_every_n_steps=1")
SMOKE_PROBE = ("trainer.epochs=1", "trainer.batch_size=2", "trainer.log_every_n_steps=1",
               "data.val_split=train")  # the tiny world's val split is empty


@dataclass(frozen=True)
class AblationRun:
    """One cell at one seed: the resolved configs of its runs (``pretrain`` None for a random init)."""

    cell: str
    seed: int
    pretrain: Optional[PretrainConfig]
    probe: DownstreamConfig
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.cell} seed {self.seed}"


def select_cells(cfg: AblationConfig, names: Optional[Sequence[str]]) -> list[str]:
    """The cells to run, in the config's order; ``names`` None = all.

    Raises
    ------
    ConfigError
        A name is not a cell of ``cfg``.
    """
    if not cfg.cells:
        raise ConfigError("the ablation config defines no cells (cells: {name: {axes: [...], overrides: [...]}})",
                          key="cells")
    if not names:
        return list(cfg.cells)
    unknown = [name for name in names if name not in cfg.cells]
    if unknown:
        raise ConfigError(f"--cells: unknown cell {', '.join(map(repr, unknown))}; the cells are "
                          f"{', '.join(cfg.cells)}", key="cells")
    return [name for name in cfg.cells if name in names]


def world_index(world: str | Path) -> Path:
    """The index of a synthetic world folder (written if the world has none yet).

    Raises
    ------
    DataError
        The folder does not exist or holds no nuScenes-layout world.
    """
    world = Path(world)
    if not world.is_dir():
        raise DataError(f"--world {world}: no such folder (generate one with `slidr synth --out {world}`)")
    if not (world / "index.npz").is_file() and not (world / "synth_summary.json").is_file() and not any(
            world.glob("v1.0-*")):
        raise DataError(f"--world {world}: no synthetic world there (no index.npz, synth_summary.json or v1.0-* "
                        f"tables); generate one with `slidr synth --out {world}`")
    return prepare_nuscenes_world(world)


def smoke_world(folder: str | Path) -> Path:
    """A tiny synthetic world (``--smoke`` without ``--world``), generated once into ``folder``."""
    return runner_smoke_world(folder, "nuscenes")


def plan(cfg: AblationConfig, index: Path, out: Path, cells: Sequence[str], seeds: Sequence[int],
         smoke: bool = False) -> list[AblationRun]:
    """Every (cell, seed) with its resolved configs, cell by cell."""
    runs = []
    splits = {"data.index": str(index), "data.train_split": cfg.train_split}
    base = with_changes(cfg.pretrain, splits)
    for name in cells:
        spec = cfg.cells[name]
        try:
            pretrain_cfg = None if spec.random_init else with_overrides(
                base, [*spec.overrides, *(SMOKE_PRETRAIN if smoke else ())])
        except ConfigError as error:
            raise ConfigError(f"cell {name}: {error}", key=error.key) from None
        backbone = (pretrain_cfg or base).backbone
        for seed in seeds:
            probe = with_changes(cfg.probe, {
                "mode": "probe", "data.index": str(index), "data.train_split": cfg.train_split,
                "data.val_split": cfg.eval_split, "backbone.name": backbone.name,
                "backbone.in_channels": backbone.in_channels, "trainer.seed": seed})
            probe = with_overrides(probe, SMOKE_PROBE if smoke else ())
            seeded = None if pretrain_cfg is None else with_changes(pretrain_cfg, {"trainer.seed": seed})
            runs.append(AblationRun(name, seed, seeded, probe, out / "runs" / name / f"seed{seed}"))
    return runs


def describe(run: AblationRun) -> dict[str, str]:
    """The cell's teacher, superpixels and method in words, from its resolved pretraining config."""
    cfg = run.pretrain
    if cfg is None:
        return {"teacher": "none", "superpixels": "none", "method": "random init"}
    teacher = f"{cfg.image.encoder} ({cfg.image.weights if cfg.image.weights else 'random weights'})"
    sp = cfg.data.superpixels
    uses_superpixels = cfg.method in ("slidr", "stslidr") and cfg.loss.use_superpixels and sp.method != "none"
    superpixels = (f"{sp.method}{sp.n_segments}" if sp.method == "slic" else sp.method) if uses_superpixels \
        else "none"
    return {"teacher": teacher, "superpixels": superpixels, "method": cfg.method}


def run_one(run: AblationRun, index: Path, workers: int) -> Any:
    """The cell function of :func:`slidr.analysis.runner.run_cells`: superpixels (missing ones), pretraining
    (skipped for a random init), probe; returns the cell's summary."""

    def work(folder: Path, resume: bool) -> dict:
        began = time.perf_counter()
        pretrained: Optional[Path] = None
        pretrain_summary: dict = {}
        if run.pretrain is not None:
            compute_superpixels(index, [run.pretrain], workers)
            pretrained, pretrain_summary = pretrain(run.pretrain, folder / "pretrain")
        probe_cfg = with_changes(run.probe, {"pretrained": None if pretrained is None else str(pretrained)})
        evaluation = downstream(probe_cfg, folder / "probe")
        return {"cell": run.cell, "seed": run.seed, **describe(run), "miou": evaluation["miou"],
                "accuracy": evaluation.get("accuracy"), "per_class": evaluation.get("per_class"),
                "pretrain_final_loss": pretrain_summary.get("final_loss"),
                "wall_s": round(time.perf_counter() - began, 1)}

    return work


def ablation_table(cfg: AblationConfig, runs: Sequence[AblationRun], summaries: Mapping[str, Mapping],
                   eval_split: str) -> dict:
    """The table's content: per cell its description, per-seed mIoU, mean, std, wall times and published number."""
    cells: list[dict] = []
    for name in dict.fromkeys(run.cell for run in runs):
        chosen = [run for run in runs if run.cell == name and run.name in summaries]
        spec = cfg.cells[name]
        values = [summaries[run.name]["miou"] for run in chosen]
        stats = statistics(values)
        first = next(run for run in runs if run.cell == name)
        cells.append({"name": name, "label": spec.label or name, **describe(first), "axes": list(spec.axes),
                      "miou_mean": stats["mean"], "miou_std": stats["std"], "miou_values": values,
                      "seeds": [run.seed for run in chosen],
                      "wall_s": [summaries[run.name].get("wall_s") for run in chosen],
                      "published": spec.published, "published_source": spec.published_source})
    return {"title": f"Ablations on the synthetic world: linear-probe mIoU % on {eval_split}",
            "eval_split": eval_split, "train_split": cfg.train_split, "cells": cells,
            "note": "linear probing on nuScenes (MinkUNet34, the papers' teachers); not "
                    "comparable with synthetic-world numbers, shown for reference only"}


def ablation_markdown(table: Mapping) -> str:
    """One section per axis: ``| cell | teacher | superpixels | method | mIoU | seeds | s/seed |`` (the method
    section adds the published nuScenes number)."""
    lines = [f"# {table['title']}\n", f"Mean ± std over seeds; pretraining and probe trained on "
             f"{table['train_split']}, nothing chosen on {table['eval_split']}.\n"]
    for axis in AXES:
        rows = [cell for cell in table["cells"] if axis in cell["axes"]]
        if not rows:
            continue
        published = axis == "method"
        lines += [f"## {AXIS_TITLES[axis]}\n", "| cell | teacher | superpixels | method | mIoU | seeds | s per seed |"
                  + (" published nuScenes LP (not comparable) |" if published else ""),
                  "|---|---|---|---|---:|---:|---:|" + ("---:|" if published else "")]
        for cell in rows:
            walls = [w for w in cell["wall_s"] if w is not None]
            line = (f"| {cell['label']} | {cell['teacher']} | {cell['superpixels']} | {cell['method']} | "
                    f"{measured_text({'mean': cell['miou_mean'], 'std': cell['miou_std']})} | {len(cell['seeds'])} | "
                    f"{sum(walls) / len(walls):.0f} |" if walls else "n/a |")
            if published:
                line += f" {cell['published']:.1f} |" if cell["published"] is not None else " n/a |"
            lines.append(line)
        lines.append("")
    lines.append(f"Published numbers: {table['note']}.")
    return "\n".join(lines) + "\n"


def ablation_chart(table: Mapping, path: Path) -> Path:
    """A bar per cell (mean, std as error bar), grouped by axis."""
    cells = table["cells"]
    return grouped_bar_chart(path, [cell["label"] for cell in cells],
                             {"synthetic world": [{"mean": c["miou_mean"], "std": c["miou_std"]} for c in cells]},
                             title=table["title"])


def dry_run_text(runs: Sequence[AblationRun]) -> str:
    """One line per run: its cell, seed, state and the settings that make it differ from the base."""
    lines = []
    for run in runs:
        state = cell_state(run.folder, CELL_SUMMARY)
        what = describe(run)
        lines.append(f"{run.name}: {state}; teacher {what['teacher']}, superpixels {what['superpixels']}, method "
                     f"{what['method']}; pretrain "
                     + ("none" if run.pretrain is None else f"{run.pretrain.trainer.epochs} epoch(s)")
                     + f", probe {run.probe.trainer.epochs} epoch(s); {run.folder}")
    return "\n".join(lines) + "\n"


def run_ablation(cfg: AblationConfig, index: Path, out: str | Path, cells: Sequence[str], seeds: Sequence[int],
                 smoke: bool = False) -> dict:
    """Run (or read back) every cell at every seed and write ``ablation.{md,json,png}`` into ``out``; returns the
    table's JSON content."""
    out = Path(out)
    began = time.perf_counter()
    runs = plan(cfg, index, out, cells, seeds, smoke)
    summaries = run_cells([Cell(run.name, run.folder, run_one(run, index, cfg.workers), CELL_SUMMARY)
                           for run in runs], "ablate")
    table = ablation_table(cfg, runs, summaries, cfg.eval_split)
    table.update(world_index=str(index), smoke=smoke, seeds=list(seeds), wall_s=round(time.perf_counter() - began, 1))
    write_table_files(out, STEM, ablation_markdown(table), table, lambda path: ablation_chart(table, path))
    logger.info("ablate: table in %s/%s.{md,json,png}", out, STEM)
    return table
