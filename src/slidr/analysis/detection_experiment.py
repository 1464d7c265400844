"""The detection experiment of the paper: fine-tuning runs at 5 / 10 / 20% of the labels, their table and chart.

:func:`detect` is one ``slidr detect`` run with its outputs (the run folder of
:func:`slidr.methods.detect.run_detection`, the detection report, the pictures). The table
(:func:`run_detection_table`, ``slidr detect-table``) is a list of cells (:func:`detection_cells`): one run per
(pretraining: random init / PPKT / SLidR, label fraction, seed), each in its own folder ``OUT/runs/<cell>``; a
finished run (``summary.json``) is read back, an interrupted one (checkpoints, no summary) resumed, the others
started (:func:`slidr.analysis.runner.run_cells`, the runner every table command shares).
:func:`write_detection_table` lays the moderate mAP out as the paper's table (a row per pretraining, a
column per fraction; mean +- standard deviation over seeds) with the paper's number beside each measured one, in
markdown, JSON and a bar chart.

The paper's numbers (SLidR, CVPR 2022) were measured on KITTI with PointRCNN whose PointNet++ backbone is replaced
by the pretrained SR-UNet, in OpenPCDet; slidr's detector is a CenterPoint BEV head on the same backbone (see
``docs/detection.md`` for the choice), so a measured cell and the paper's number beside it are two detectors on
possibly two datasets: the comparison that matters is between the rows of one column.

:func:`search_learning_rates` (``slidr detect-lr``) is the learning-rate search: the candidates are trained on the
``parametrizing`` part of train and scored on its held-out ``verifying`` part, never on ``val``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from slidr.analysis.runner import Cell, cell_state, measured_text, run_cells, statistics, write_table_files
from slidr.config import ConfigError, DetectionConfig, with_changes
from slidr.errors import SlidrError
from slidr.utils.io import atomic_write_text, save_figure, write_json
from slidr.utils.log import logger

PRETRAININGS = ("random", "ppkt", "slidr")
PRETRAINING_NAMES = {"random": "Random init.", "ppkt": "PPKT", "slidr": "SLidR"}
FRACTIONS = (0.05, 0.10, 0.20)
# SLidR (CVPR 2022): KITTI 3D detection, mAP at 5 / 10 / 20% of the training labels (PointRCNN with the
# pretrained SR-UNet as backbone, OpenPCDet)
PAPER_MAP = {"random": {0.05: 56.1, 0.10: 59.1, 0.20: 61.6},
             "ppkt": {0.05: 57.8, 0.10: 60.1, 0.20: 61.2},
             "slidr": {0.05: 57.8, 0.10: 61.4, 0.20: 62.4}}
TABLE_METRICS = ("3d", "bev")
# --smoke: a few steps on a tiny synthetic world, to check that every part runs (numbers mean nothing)
SMOKE_OVERRIDES = ("trainer.epochs=1", "trainer.max_steps=2", "trainer.batch_size=2", "data.val_split=train",
                   "pictures=1", "trainer.log_every_n_steps=1")


# --------------------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------------------
def detect(cfg: DetectionConfig, out: str | Path, resume: bool = False, name: Optional[str] = None,
           pictures: bool = True, dataset_factory: Optional[Callable] = None,
           enable_progress_bar: bool = True) -> dict:
    """``slidr detect``: fine-tune and evaluate (:func:`slidr.methods.detect.run_detection`), then write the
    detection report (``detection.md``, ``detection.json``, ``detection_ap.png``) and ``cfg.pictures`` pictures
    of validation frames (``pictures/NNNNNN.png``) into ``out``.

    Returns the summary (empty on processes other than rank 0), with ``report`` and ``pictures`` (paths).
    """
    from slidr.analysis.detection_report import write_detection_report
    from slidr.analysis.detection_view import detection_pictures
    from slidr.methods.detect import MODEL_NAME, make_dataset, run_detection

    out = Path(out)
    summary = run_detection(cfg, out, resume=resume, dataset_factory=dataset_factory or make_dataset,
                            enable_progress_bar=enable_progress_bar)
    if not summary:
        return summary
    label = name or run_label(cfg)
    paths = write_detection_report({label: summary["evaluation"]}, out, stem="detection",
                                   title=f"{label} on {cfg.data.val_split}")
    summary["report"] = {key: str(path) for key, path in paths.items()}
    drawn = detection_pictures(out / MODEL_NAME, cfg, out / "pictures") if pictures and cfg.pictures else []
    summary["pictures"] = [str(path) for path in drawn]
    write_json(out / "summary.json", summary)
    return summary


def run_label(cfg: DetectionConfig) -> str:
    """A short name of a run: its pretraining (file name's folder, or "random init") and label fraction."""
    pretraining = "random init" if cfg.pretrained is None else Path(cfg.pretrained).parent.name or cfg.pretrained
    return f"{pretraining}, {100 * cfg.data.label_fraction:g}% labels"


# --------------------------------------------------------------------------------------------------------------
# The table's cells
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectionCell:
    """One run of the table: a pretraining (``random``, ``ppkt``, ``slidr``), a label fraction and a seed."""

    pretraining: str
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.pretraining}_{100 * self.fraction:g}pct_seed{self.seed}"


def detection_cells(pretrainings: Sequence[str] = PRETRAININGS, fractions: Sequence[float] = FRACTIONS,
                    seeds: Sequence[int] = (0, 1, 2)) -> list[DetectionCell]:
    """Every (pretraining, fraction, seed), fraction by fraction (each column fills before the next)."""
    unknown = [p for p in pretrainings if p not in PRETRAININGS]
    if unknown:
        raise ConfigError(f"unknown pretraining(s) {unknown}; the table's rows are {', '.join(PRETRAININGS)}")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ConfigError(f"label fractions must be in (0, 1], got {bad}")
    return [DetectionCell(p, float(f), int(s)) for f in fractions for s in seeds for p in pretrainings]


def cell_config(base: DetectionConfig, cell: DetectionCell, pretrained: Optional[str]) -> DetectionConfig:
    """The config of one cell: ``base`` with the cell's pretrained file, label fraction and seed."""
    if (pretrained is None) != (cell.pretraining == "random"):
        raise ConfigError(f"cell {cell.name}: {'a random init takes no' if pretrained else 'needs a'} pretrained file")
    return with_changes(base, {"pretrained": pretrained, "data.label_fraction": cell.fraction,
                               "trainer.seed": cell.seed})


def with_shared_backbone(base: DetectionConfig, files: Sequence[str]) -> DetectionConfig:
    """``base`` with the backbone ``name`` / ``in_channels`` it leaves unset taken from the pretrained ``files``,
    so that every row of the table, the random initialisation included, trains the same network.

    Raises
    ------
    ConfigError
        The files hold different networks (the rows would not compare like with like).
    """
    from slidr.config import ARCHITECTURE_KEYS
    from slidr.engine.checkpoint import export_backbone

    changes: dict[str, Any] = {}
    for key in ARCHITECTURE_KEYS:
        if getattr(base.backbone, key) is not None:
            continue
        # a missing file is left to its run, which names it
        recorded = {path: (export_backbone(path) or {}).get(key) for path in files if Path(path).is_file()}
        values = {value for value in recorded.values() if value is not None}
        if len(values) > 1:
            raise ConfigError(f"the pretrained files hold different networks (backbone.{key}: "
                              f"{', '.join(f'{path}: {value}' for path, value in recorded.items())}); the table "
                              f"compares one network", key=f"backbone.{key}")
        if values:
            changes[f"backbone.{key}"] = values.pop()
    return with_changes(base, changes) if changes else base


def run_detection_table(base: DetectionConfig, pretrained: Mapping[str, Optional[str]], out: str | Path,
                        fractions: Sequence[float] = FRACTIONS, seeds: Sequence[int] = (0, 1, 2),
                        run: Callable[..., dict] = detect, enable_progress_bar: bool = False) -> dict:
    """Run (or read back) every cell and write the table (:func:`write_detection_table`) into ``out``.

    Parameters
    ----------
    base : the settings every cell shares (data, backbone, head, optimisation).
    pretrained : pretraining -> exported file; ``random`` maps to None. The rows are the keys, in
        :data:`PRETRAININGS` order.
    out : ``out/runs/<cell>`` per run, the table files in ``out``.
    fractions, seeds : the columns and the repetitions.
    run : ``(cfg, folder, resume=..., name=..., enable_progress_bar=...) -> summary`` (default :func:`detect`).

    Returns
    -------
    the table's JSON content (also ``out/detection_table.json``).
    """
    out = Path(out)
    rows = [p for p in PRETRAININGS if p in pretrained]
    cells = detection_cells(rows, fractions, seeds)
    base = with_shared_backbone(base, [path for path in pretrained.values() if path is not None])

    def work(cell: DetectionCell) -> Callable[[Path, bool], dict]:
        cfg = cell_config(base, cell, pretrained[cell.pretraining])
        name = f"{PRETRAINING_NAMES[cell.pretraining]} {100 * cell.fraction:g}% seed {cell.seed}"
        return lambda folder, resume: run(cfg, folder, resume=resume, name=name,
                                          enable_progress_bar=enable_progress_bar)

    summaries = run_cells([Cell(cell.name, out / "runs" / cell.name, work(cell)) for cell in cells], "detect-table")
    table = detection_table(cells, summaries)
    write_detection_table(table, out)
    return table


# --------------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------------
def detection_table(cells: Sequence[DetectionCell], summaries: Mapping[str, Mapping]) -> dict:
    """The table's content: per pretraining and fraction, the per-seed moderate mAPs (3D, BEV), the per-class
    moderate 3D AP, wall times, their means and standard deviations, and the paper's number.

    ``summaries`` maps cell names to run summaries (``evaluation``, ``wall_s``); missing cells are left out.
    """
    fractions = sorted({cell.fraction for cell in cells})
    rows = [p for p in PRETRAININGS if any(cell.pretraining == p for cell in cells)]
    table: dict[str, Any] = {"fractions": fractions, "pretrainings": rows, "metrics": list(TABLE_METRICS),
                             "paper": {p: {_key(f): PAPER_MAP[p].get(round(f, 4)) for f in fractions} for p in rows},
                             "cells": {}, "classes": None, "recall_positions": None}
    for pretraining in rows:
        for fraction in fractions:
            chosen = [cell for cell in cells if cell.pretraining == pretraining and cell.fraction == fraction
                      and cell.name in summaries]
            entry: dict[str, Any] = {"seeds": [cell.seed for cell in chosen], "map_moderate": {}, "class_ap": {},
                                     "wall_s": [summaries[cell.name].get("wall_s") for cell in chosen],
                                     "train_frames": [summaries[cell.name].get("train_frames") for cell in chosen],
                                     "notes": sorted({note for cell in chosen
                                                      for note in summaries[cell.name]["evaluation"].get("notes", [])})}
            for metric in TABLE_METRICS:
                values = [summaries[cell.name]["evaluation"]["map"][metric]["moderate"] for cell in chosen]
                entry["map_moderate"][metric] = statistics(values)
            if chosen:
                evaluation = summaries[chosen[0].name]["evaluation"]
                table["classes"] = list(evaluation["classes"])
                table["recall_positions"] = evaluation["recall_positions"]
                for name in evaluation["classes"]:
                    entry["class_ap"][name] = statistics(
                        [summaries[cell.name]["evaluation"]["ap"]["3d"][name]["moderate"] for cell in chosen])
            entry["wall_s_mean"] = statistics(entry["wall_s"])["mean"]
            table["cells"].setdefault(pretraining, {})[_key(fraction)] = entry
    return table


def _key(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def detection_table_markdown(table: Mapping) -> str:
    """The paper's layout: a row per pretraining, a column per fraction, ``measured (paper)`` in each cell; then
    the same for BEV, the per-class moderate 3D AP and the wall time per run."""
    fractions = [_key(f) for f in table["fractions"]]
    positions = table.get("recall_positions") or "?"
    lines = [f"## Moderate mAP, 3D AP|R{positions} (mean ± std over seeds; the paper's KITTI mAP in brackets)\n",
             "| pretraining | " + " | ".join(fractions) + " |", "|---|" + "---:|" * len(fractions)]
    for pretraining in table["pretrainings"]:
        cells = []
        for key in fractions:
            paper = table["paper"][pretraining][key]
            cells.append(measured_text(table["cells"][pretraining][key]["map_moderate"]["3d"])
                         + (f" ({paper:.1f})" if paper is not None else ""))
        lines.append(f"| {PRETRAINING_NAMES[pretraining]} | " + " | ".join(cells) + " |")
    lines += ["", f"## Moderate mAP, BEV AP|R{positions}\n", "| pretraining | " + " | ".join(fractions) + " |",
              "|---|" + "---:|" * len(fractions)]
    for pretraining in table["pretrainings"]:
        lines.append(f"| {PRETRAINING_NAMES[pretraining]} | " + " | ".join(
            measured_text(table["cells"][pretraining][key]["map_moderate"]["bev"]) for key in fractions) + " |")
    classes = table.get("classes") or []
    if classes:
        header = [f"{name} {key}" for key in fractions for name in classes]
        lines += ["", f"## Moderate 3D AP|R{positions} per class\n", "| pretraining | " + " | ".join(header) + " |",
                  "|---|" + "---:|" * len(header)]
        for pretraining in table["pretrainings"]:
            lines.append(f"| {PRETRAINING_NAMES[pretraining]} | " + " | ".join(
                measured_text(table["cells"][pretraining][key]["class_ap"].get(name, {"mean": None}))
                if table["cells"][pretraining][key]["class_ap"] else "n/a"
                for key in fractions for name in classes) + " |")
    lines += ["", "## Wall time per run (s) and training frames\n", "| pretraining | " + " | ".join(fractions) + " |",
              "|---|" + "---:|" * len(fractions)]
    for pretraining in table["pretrainings"]:
        cells = []
        for key in fractions:
            entry = table["cells"][pretraining][key]
            mean = entry["wall_s_mean"]
            frames = sorted({f for f in entry["train_frames"] if f is not None})
            cells.append(("n/a" if mean is None else f"{mean:.0f}") + (f" ({frames[0]} frames)" if frames else ""))
        lines.append(f"| {PRETRAINING_NAMES[pretraining]} | " + " | ".join(cells) + " |")
    notes = sorted({note for row in table["cells"].values() for entry in row.values() for note in entry["notes"]})
    if notes:
        lines += ["", "Notes of the evaluation:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def detection_table_chart(table: Mapping, path: str | Path) -> Path:
    """Two panels: the measured moderate 3D mAP (mean, error bar = std over seeds) and the paper's, a group per
    fraction and a bar per pretraining."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = [_key(f) for f in table["fractions"]]
    rows = table["pretrainings"]
    width = 0.8 / max(1, len(rows))
    positions = np.arange(len(fractions))
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for i, pretraining in enumerate(rows):
        offset = (i - (len(rows) - 1) / 2) * width
        measured = [table["cells"][pretraining][k]["map_moderate"]["3d"] for k in fractions]
        axes[0].bar(positions + offset, [np.nan if m["mean"] is None else m["mean"] for m in measured], width,
                    yerr=[0 if m["std"] is None else m["std"] for m in measured], capsize=3,
                    label=PRETRAINING_NAMES[pretraining])
        paper = [table["paper"][pretraining][k] for k in fractions]
        axes[1].bar(positions + offset, [np.nan if p is None else p for p in paper], width,
                    label=PRETRAINING_NAMES[pretraining])
    for axis, title in zip(axes, ("measured: moderate 3D mAP", "paper (KITTI): mAP")):
        axis.set_xticks(positions)
        axis.set_xticklabels([f"{k} labels" for k in fractions])
        axis.set_title(title)
        axis.set_ylabel("%")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def write_detection_table(table: Mapping, out: str | Path, stem: str = "detection_table") -> dict[str, Path]:
    """Write ``STEM.md``, ``STEM.json`` and ``STEM.png`` into ``out``; returns their paths."""
    return write_table_files(out, stem, "# 3D detection at few labels\n\n" + detection_table_markdown(table), table,
                             lambda path: detection_table_chart(table, path))


def smoke_world(out: str | Path) -> Path:
    """A tiny synthetic world in KITTI object layout, indexed (``--smoke`` without ``--index``); reused if there."""
    from slidr.analysis.runner import smoke_world as runner_smoke_world
    from slidr.data.prepare_kitti_object import prepare_kitti_object

    root = runner_smoke_world(out, "kitti-object")
    index = root / "index.npz"
    if not index.is_file():
        prepare_kitti_object(root, index)
    return index


# --------------------------------------------------------------------------------------------------------------
# Learning-rate search
# --------------------------------------------------------------------------------------------------------------
def search_learning_rates(base: DetectionConfig, learning_rates: Sequence[float], out: str | Path,
                          train_split: str = "parametrizing", val_split: str = "verifying",
                          run: Callable[..., dict] = detect, enable_progress_bar: bool = False) -> dict:
    """Train ``base`` at each learning rate on ``train_split``, score it on ``val_split``; write ``lr_search.md`` /
    ``.json`` into ``out`` and return ``{"results": [{"lr", "map_moderate", "wall_s"}], "best": lr}`` (the best
    moderate 3D mAP; BEV breaks ties; None when every candidate scores the same).

    Raises
    ------
    ConfigError
        ``val_split`` is ``val`` or ``test``: learning rates are tuned on a held-out part of train, never on the
        evaluation split.
    """
    if val_split in ("val", "test") or train_split in ("val", "test"):
        raise ConfigError(f"learning rates are searched on held-out training data (e.g. parametrizing -> verifying), "
                          f"never on {val_split if val_split in ('val', 'test') else train_split}")
    if not learning_rates:
        raise ConfigError("give at least one learning rate to search")
    out = Path(out)
    results = []
    for lr in learning_rates:
        cfg = with_changes(base, {"optim.lr": float(lr), "data.train_split": train_split,
                                  "data.val_split": val_split, "pictures": 0})
        folder = out / f"lr_{lr:g}"
        state = cell_state(folder)
        summary = (json.loads((folder / "summary.json").read_text()) if state == "done" else
                   run(cfg, folder, resume=state == "interrupted", name=f"lr {lr:g}",
                       enable_progress_bar=enable_progress_bar))
        results.append({"lr": float(lr), "map_moderate": summary["evaluation"]["map_moderate"],
                        "wall_s": summary.get("wall_s")})

    def score(entry: Mapping) -> tuple[float, float]:
        values = entry["map_moderate"]
        return tuple(-math.inf if values.get(m) is None else values[m] for m in TABLE_METRICS)  # type: ignore

    # a tie between every candidate (e.g. all at 0 mAP: too few steps to detect anything) chooses nothing
    tied = len(results) > 1 and len({score(entry) for entry in results}) == 1
    best = None if tied else max(results, key=score)["lr"]
    lines = [f"# Learning-rate search: train {train_split}, score {val_split}\n",
             "| lr | mAP 3D mod. | mAP BEV mod. | wall s |", "|---:|---:|---:|---:|"]
    for entry in results:
        values = entry["map_moderate"]
        lines.append(f"| {entry['lr']:g}{' (best)' if entry['lr'] == best else ''} | "
                     + " | ".join("n/a" if values.get(m) is None else f"{values[m]:.1f}" for m in TABLE_METRICS)
                     + f" | {entry['wall_s'] or 0:.0f} |")
    if tied:
        lines.append("\nNo best: every candidate scores the same, so the search decides nothing (train longer).")
        logger.warning("warning: detect-lr: every learning rate scores the same on %s; no best chosen", val_split)
    answer = {"train_split": train_split, "val_split": val_split, "results": results, "best": best}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "lr_search.md", "\n".join(lines) + "\n")
    write_json(out / "lr_search.json", answer)
    if not any(entry["map_moderate"].get("3d") is not None for entry in results):
        raise SlidrError(f"no learning rate gave a moderate 3D mAP on {val_split} (no counted ground truth?)")
    return answer
