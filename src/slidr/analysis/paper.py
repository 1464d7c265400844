"""``slidr reproduce TABLE``: the paper's tables, every step each cell needs, resumable, with the paper's numbers.

The cells come from the packaged cell families ``configs/paper/*.yaml`` (:class:`slidr.config.PaperCellsConfig`):
a family is a row of one or more tables, naming the pretraining it needs (null: random initialisation) and its
downstream runs (columns), each with the paper's number. ``reproduce`` prepares the indexes (``OUT/indexes/``),
computes the superpixels a pretraining needs, pretrains once per distinct resolved pretraining config
(``OUT/pretrain/<config>-<hash>/``, seed of the config: the paper pretrains once) and runs each downstream run once
per seed (``trainer.seed``; ``OUT/runs/<column>-<hash>/seed<s>/``, the hash over the resolved config, so that a
run two tables share, e.g. SLidR's 1% fine-tuning of Table 1 and of the efficiency table, runs once). Finished
cells are read back, interrupted ones resumed (:mod:`slidr.analysis.runner`). The table (``TABLE.md``,
``TABLE.json``, ``TABLE.png``) puts mean ± std over seeds beside the paper's number.

``detection`` pretrains PPKT† and SLidR as Table 1 does (same runs) and runs the detection table of
:mod:`slidr.analysis.detection_experiment` on KITTI 3D object.

``--smoke`` shrinks every run (:data:`SMOKE_PRETRAIN`, :data:`SMOKE_DOWNSTREAM`: a few steps, a half-width
MinkUNet14, a ResNet-18 teacher on small images) and, for datasets not given, generates a tiny synthetic world
(:data:`slidr.analysis.runner.SMOKE_WORLD`) in the needed layout: it checks the whole chain, its numbers mean nothing.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from slidr.analysis.runner import (
    Cell,
    cell_state,
    compute_superpixels,
    downstream,
    grouped_bar_chart,
    measured_text,
    pretrain,
    run_cells,
    smoke_world,
    statistics,
    write_table_files,
)
from slidr.config import (
    DownstreamConfig,
    PaperCellsConfig,
    PretrainConfig,
    dump_config,
    load_config,
    packaged_configs,
    with_changes,
    with_overrides,
)
from slidr.engine.checkpoint import EXPORT_NAME
from slidr.errors import ConfigError, DataError, UsageError
from slidr.utils.log import logger

TABLES = ("table1", "table6", "efficiency", "detection")
TITLES = {"table1": "Table 1: few-shot semantic segmentation (mIoU %, val)",
          "table6": "Table 6: superpixels (mIoU %, mini-val)",
          "efficiency": "Annotation efficiency (supplementary D.3): nuScenes fine-tuning (mIoU %, val)",
          "detection": "3D detection on KITTI at few labels"}
# what each dataset is read from: the command-line option naming its root
DATASET_OPTIONS = {"nuscenes": "--dataroot", "semantickitti": "--semantickitti", "kitti_object": "--kitti-object"}
DETECTION_FAMILIES = {"ppkt": "paper/table1_ppkt.yaml", "slidr": "paper/table1_slidr.yaml"}
CELL_SUMMARY = "cell.json"
_SMALL = ("trainer.epochs=1", "trainer.max_steps=2", "trainer.batch_size=2", "trainer.accelerator=cpu",
          "trainer.devices=1", "trainer.num_threads=2", "trainer.intended_accelerator=null",
          "trainer.log_every_n_steps=1", "data.num_workers=0", "backbone.name=minkunet14_half")
# a ResNet-18 teacher without dilation on small images: the dilated teacher at 224x416 takes ~80 s a step on 2 cores
SMOKE_PRETRAIN = (*_SMALL, "image.encoder=resnet18", "image.dilated=false", "data.image_size=[112,208]",
                  "pairs.min_distance=0.0", "pairs.equivalent_epochs=null")
# the tiny world has no val scenes, and 1% of its 2 scenes is none
SMOKE_DOWNSTREAM = (*_SMALL, "data.train_split=train", "data.val_split=train", "data.label_fraction=1.0")


# --------------------------------------------------------------------------------------------------------------
# Families and runs
# --------------------------------------------------------------------------------------------------------------
def paper_families(table: str, rows: Optional[Sequence[str]] = None) -> dict[str, PaperCellsConfig]:
    """The packaged cell families (``paper/<name>.yaml``) that are rows of ``table``, in row order (only ``rows``
    when given).

    Raises
    ------
    ConfigError
        ``table`` is not one of :data:`TABLES`, or a name of ``rows`` is not one of its rows.
    """
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")
    families = {}
    for name in packaged_configs():
        if name.startswith("paper/"):
            family = load_config(PaperCellsConfig, name)
            if table in family.tables:
                families[Path(name).stem] = family
    unknown = [row for row in rows or () if row not in families]
    if unknown:
        raise ConfigError(f"--rows: {', '.join(map(repr, unknown))} not a row of {table}; its rows are "
                          f"{', '.join(families)}")
    return dict(sorted(((key, family) for key, family in families.items() if not rows or key in rows),
                       key=lambda item: item[1].order))


@dataclass(frozen=True)
class PretrainRun:
    """One pretraining: its config source, resolved settings and folder."""

    source: str
    overrides: tuple[str, ...]
    cfg: PretrainConfig
    folder: Path


@dataclass(frozen=True)
class DownstreamRun:
    """One downstream run of a cell at one seed."""

    family: str
    column: str
    seed: int
    source: str
    overrides: tuple[str, ...]
    cfg: DownstreamConfig
    pretrain: Optional[PretrainRun]
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.family}/{self.column} seed {self.seed}"


def _digest(cfg: Any) -> str:
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()[:8]


def resolve_pretraining(family: PaperCellsConfig, index: Path, out: Path, smoke: bool) -> Optional[PretrainRun]:
    """The family's pretraining with the index and (``smoke``) the shrinking overrides; None for a random init."""
    if family.pretrain is None:
        return None
    overrides = (*family.pretrain_overrides, *(SMOKE_PRETRAIN if smoke else ()))
    cfg = with_changes(with_overrides(load_config(PretrainConfig, family.pretrain), overrides),
                       {"data.index": str(index)})
    folder = out / "pretrain" / f"{Path(family.pretrain).stem}-{_digest(cfg)}"
    return PretrainRun(family.pretrain, overrides, cfg, folder)


def plan(table: str, indexes: Mapping[str, Path], out: Path, seeds: Sequence[int],
         smoke: bool = False, rows: Optional[Sequence[str]] = None) -> list[DownstreamRun]:
    """Every downstream run of ``table`` (family by family, column by column, seed by seed) with its resolved
    config; ``indexes`` maps a dataset (nuscenes, semantickitti) to its index file."""
    runs = []
    for key, family in paper_families(table, rows).items():
        pretraining = resolve_pretraining(family, indexes["nuscenes"], out, smoke)
        for column, spec in family.columns.items():
            overrides = (*spec.overrides, *(SMOKE_DOWNSTREAM if smoke else ()))
            loaded = load_config(DownstreamConfig, spec.downstream)
            cfg = with_overrides(loaded, overrides)
            cfg = with_changes(cfg, {"data.index": str(indexes[cfg.data.dataset]), "pretrained": None if pretraining
                                     is None else str(pretraining.folder / EXPORT_NAME)}).with_resolved_epochs()
            folder = out / "runs" / f"{column}-{_digest(cfg)}"
            for seed in seeds:
                runs.append(DownstreamRun(key, column, seed, spec.downstream, overrides,
                                          with_changes(cfg, {"trainer.seed": seed}), pretraining,
                                          folder / f"seed{seed}"))
    return runs


def datasets_of(table: str) -> list[str]:
    """The datasets ``table`` reads (nuScenes always: every pretraining uses it)."""
    if table == "detection":
        return ["nuscenes", "kitti_object"]
    found = {"nuscenes"}
    for family in paper_families(table).values():
        for spec in family.columns.values():
            found.add(load_config(DownstreamConfig, spec.downstream).data.dataset)
    return sorted(found)


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------
def prepare_indexes(datasets: Sequence[str], roots: Mapping[str, Optional[str]], out: Path, smoke: bool,
                    version: str = "v1.0-trainval") -> dict[str, Path]:
    """The index of each dataset in ``OUT/indexes/<dataset>/index.npz`` (written if absent; superpixels beside
    it). A dataset without a root is a tiny synthetic world (``OUT/world/<dataset>``) with ``smoke``, an error
    otherwise.

    Raises
    ------
    UsageError
        A root is missing (one line naming the option).
    DataError
        A root does not exist.
    """
    indexes = {}
    for dataset in datasets:
        root = roots.get(dataset)
        if root is None:
            if not smoke:
                raise UsageError(f"{DATASET_OPTIONS[dataset]} DIR is required for this table (the {dataset} root)")
            root = str(_smoke_world(out / "world" / dataset, dataset))
            dataset_version = "v1.0-trainval"
        else:
            dataset_version = version
        if not Path(root).is_dir():
            raise DataError(f"{DATASET_OPTIONS[dataset]} {root}: no such folder")
        index = out / "indexes" / dataset / "index.npz"
        if not index.is_file():
            logger.info("reproduce: indexing %s (%s) into %s", root, dataset, index)
            _prepare(dataset, Path(root), index, dataset_version)
        indexes[dataset] = index.resolve()
    return indexes


def _prepare(dataset: str, root: Path, index: Path, version: str) -> None:
    index.parent.mkdir(parents=True, exist_ok=True)
    if dataset == "nuscenes":
        from slidr.data.prepare_nuscenes import prepare_nuscenes

        prepare_nuscenes(root, version, index)
    elif dataset == "semantickitti":
        from slidr.data.prepare_semantickitti import prepare_semantickitti

        prepare_semantickitti(root, index)
    else:
        from slidr.data.prepare_kitti_object import prepare_kitti_object

        prepare_kitti_object(root, index)


def _smoke_world(folder: Path, dataset: str) -> Path:
    fmt = {"nuscenes": "nuscenes", "semantickitti": "semantickitti", "kitti_object": "kitti-object"}[dataset]
    return smoke_world(folder, fmt)


# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------
def ensure_pretrained(run: PretrainRun, index: Path, workers: int) -> Path:
    """Superpixels (missing ones) and the pretraining (reused if finished, resumed if interrupted)."""
    compute_superpixels(index, [run.cfg], workers)
    exported, _ = pretrain(run.cfg, run.folder)
    return exported


def _cell_work(run: DownstreamRun, index: Path, workers: int) -> Callable[[Path, bool], dict]:
    def work(folder: Path, resume: bool) -> dict:
        began = time.perf_counter()
        if run.pretrain is not None:
            ensure_pretrained(run.pretrain, index, workers)
        evaluation = downstream(run.cfg, folder / "run")
        return {"family": run.family, "column": run.column, "seed": run.seed, "miou": evaluation["miou"],
                "pretrained": run.cfg.pretrained, "downstream": run.source, "overrides": list(run.overrides),
                "wall_s": round(time.perf_counter() - began, 1)}

    return work


def paper_table(table: str, runs: Sequence[DownstreamRun], summaries: Mapping[str, Mapping], smoke: bool,
                rows: Optional[Sequence[str]] = None) -> dict:
    """The table's content: rows (families), columns, and per cell the per-seed mIoU, mean, std and the paper's."""
    families = paper_families(table, rows)
    columns: dict[str, str] = {}
    for family in families.values():
        for key, spec in family.columns.items():
            columns.setdefault(key, spec.label)
    cells: dict[str, dict] = {}
    for key, family in families.items():
        for column, spec in family.columns.items():
            chosen = [run for run in runs if run.family == key and run.column == column and run.name in summaries]
            values = [summaries[run.name]["miou"] for run in chosen]
            cells.setdefault(key, {})[column] = {**statistics(values), "seeds": [run.seed for run in chosen],
                                                 "paper": spec.paper,
                                                 "wall_s": [summaries[run.name].get("wall_s") for run in chosen]}
    return {"table": table, "title": TITLES[table], "smoke": smoke,
            "rows": [{"key": key, "label": family.label, "pretrain": family.pretrain, "source": family.source}
                     for key, family in families.items()],
            "columns": [{"key": key, "label": label} for key, label in columns.items()], "cells": cells}


def paper_table_markdown(table: Mapping) -> str:
    """The paper's layout: a row per method, a column per downstream run, ``measured (paper)`` in each cell."""
    lines = [f"# {table['title']}\n",
             "Measured: mean ± std over seeds; the paper's number in brackets."
             + (" SMOKE RUN: a few steps on a tiny synthetic world, the numbers mean nothing." if table["smoke"]
                else "") + "\n",
             "| method | " + " | ".join(c["label"] for c in table["columns"]) + " |",
             "|---|" + "---:|" * len(table["columns"])]
    for row in table["rows"]:
        texts = []
        for column in table["columns"]:
            cell = table["cells"][row["key"]].get(column["key"])
            if cell is None:
                texts.append("")
                continue
            texts.append(measured_text(cell) + (f" ({cell['paper']:.1f})" if cell["paper"] is not None else ""))
        lines.append(f"| {row['label']} | " + " | ".join(texts) + " |")
    sources = sorted({row["source"] for row in table["rows"] if row["source"]})
    lines += ["", "Paper's numbers: " + "; ".join(sources) + "."]
    return "\n".join(lines) + "\n"


def paper_table_chart(table: Mapping, path: Path) -> Path:
    """Grouped bars: a group per column, a bar per row (measured mean ± std), the paper's number as a tick."""
    columns = [c["key"] for c in table["columns"]]
    empty = {"mean": None, "std": None}
    series = {row["label"]: [table["cells"][row["key"]].get(c, empty) for c in columns] for row in table["rows"]}
    references = {row["label"]: [table["cells"][row["key"]].get(c, {}).get("paper") for c in columns]
                  for row in table["rows"]}
    return grouped_bar_chart(path, [c["label"] for c in table["columns"]], series, title=table["title"],
                             references=references)


def dry_run_text(table: str, runs: Sequence[DownstreamRun]) -> str:
    """One line per pretraining and per downstream run: its config, overrides, state and folder."""
    lines = []
    pretrainings = {run.pretrain.folder: run.pretrain for run in runs if run.pretrain is not None}
    for number, pretraining in enumerate(pretrainings.values(), 1):
        state = "done" if (pretraining.folder / EXPORT_NAME).is_file() else cell_state(pretraining.folder)
        lines.append(f"pretrain {number}/{len(pretrainings)}: {pretraining.source} "
                     f"{' '.join(pretraining.overrides)} [{state}] -> {pretraining.folder}")
    for number, run in enumerate(runs, 1):
        lines.append(f"{table} {number}/{len(runs)} {run.name}: {run.source} {' '.join(run.overrides)} "
                     f"(pretrained: {run.cfg.pretrained or 'none, random init'}; {run.cfg.trainer.epochs} epochs) "
                     f"[{cell_state(run.folder, CELL_SUMMARY)}] -> {run.folder}")
    return "\n".join(lines) + "\n"


def configs_text(runs: Sequence[DownstreamRun]) -> str:
    """The fully resolved config of every pretraining and of every downstream run (first seed), as YAML documents
    headed by a comment naming the run (``slidr reproduce --print-config``)."""
    parts = []
    pretrainings = {run.pretrain.folder: run.pretrain for run in runs if run.pretrain is not None}
    for pretraining in pretrainings.values():
        parts.append(f"# pretraining {pretraining.folder.name}: {pretraining.source} "
                     f"{' '.join(pretraining.overrides)}\n{dump_config(pretraining.cfg)}")
    for run in runs:
        if run.seed == min(r.seed for r in runs):
            parts.append(f"# {run.family}/{run.column} (seed {run.seed}; other seeds differ by trainer.seed): "
                         f"{run.source} {' '.join(run.overrides)}\n{dump_config(run.cfg)}")
    return "---\n".join(parts)


def reproduce(table: str, out: str | Path, roots: Mapping[str, Optional[str]], seeds: Sequence[int],
              smoke: bool = False, dry_run: bool = False, workers: int = 2, version: str = "v1.0-trainval",
              rows: Optional[Sequence[str]] = None, print_config: bool = False) -> dict:
    """Run (or read back) every cell of ``table`` (of its ``rows`` only, when given) and write
    ``OUT/TABLE.{md,json,png}``; returns the table's JSON content (``dry_run``: ``{"plan": text}``, nothing run,
    nothing written; ``print_config``: ``{"plan": the resolved configs}``)."""
    out = Path(out)
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")
    if rows and table == "detection":
        raise ConfigError("--rows applies to table1, table6 and efficiency; the detection table's rows are fixed")
    if table != "detection":
        paper_families(table, rows)  # unknown rows: one line before any work
    datasets = datasets_of(table)
    if dry_run or print_config:
        indexes = {dataset: out / "indexes" / dataset / "index.npz" for dataset in datasets}
        if print_config and table != "detection":
            return {"plan": configs_text(plan(table, indexes, out, seeds, smoke, rows))}
        if table == "detection":
            return {"plan": _detection_dry_run(indexes, out, seeds, smoke)}
        return {"plan": dry_run_text(table, plan(table, indexes, out, seeds, smoke, rows))}
    indexes = prepare_indexes(datasets, roots, out, smoke, version)
    if table == "detection":
        return _reproduce_detection(indexes, out, seeds, smoke, workers)
    runs = plan(table, indexes, out, seeds, smoke, rows)
    summaries = run_cells([Cell(run.name, run.folder, _cell_work(run, indexes["nuscenes"], workers), CELL_SUMMARY)
                           for run in runs], f"reproduce {table}")
    result = paper_table(table, runs, summaries, smoke, rows)
    result["seeds"] = list(seeds)
    write_table_files(out, table, paper_table_markdown(result), result, lambda path: paper_table_chart(result, path))
    return result


def _detection_pretrainings(index: Path, out: Path, smoke: bool) -> dict[str, PretrainRun]:
    runs = {}
    for row, name in DETECTION_FAMILIES.items():
        run = resolve_pretraining(load_config(PaperCellsConfig, name), index, out, smoke)
        assert run is not None  # both families pretrain
        runs[row] = run
    return runs


def _detection_base(index: Path, smoke: bool) -> Any:
    from slidr.analysis.detection_experiment import SMOKE_OVERRIDES
    from slidr.config import DetectionConfig

    if smoke:
        base = load_config(DetectionConfig, "detection/detect_demo_cpu.yaml", list(SMOKE_OVERRIDES))
    else:
        base = load_config(DetectionConfig, "detection/detect_kitti.yaml")
    return with_changes(base, {"data.index": str(index)})


def _detection_dry_run(indexes: Mapping[str, Path], out: Path, seeds: Sequence[int], smoke: bool) -> str:
    from slidr.analysis.detection_experiment import FRACTIONS, detection_cells

    lines = [f"pretrain {row}: {run.source} {' '.join(run.overrides)} -> {run.folder}"
             for row, run in _detection_pretrainings(indexes["nuscenes"], out, smoke).items()]
    config = "detection/detect_demo_cpu.yaml (smoke)" if smoke else "detection/detect_kitti.yaml"
    lines += [f"detection {cell.name}: {config} [{cell_state(out / 'detection' / 'runs' / cell.name)}]"
              for cell in detection_cells(seeds=seeds, fractions=FRACTIONS)]
    return "\n".join(lines) + "\n"


def _reproduce_detection(indexes: Mapping[str, Path], out: Path, seeds: Sequence[int], smoke: bool,
                         workers: int) -> dict:
    from slidr.analysis.detection_experiment import FRACTIONS, run_detection_table

    pretrained: dict[str, Optional[str]] = {"random": None}
    pretrainings = _detection_pretrainings(indexes["nuscenes"], out, smoke)
    for row, run in pretrainings.items():
        logger.info("reproduce detection: pretraining %s (%s)", row, run.folder)
        pretrained[row] = str(ensure_pretrained(run, indexes["nuscenes"], workers))
    # every row, the random init included, feeds the input features the pretrainings were trained on
    features = {run.cfg.data.point_features for run in pretrainings.values()}
    if len(features) != 1:
        raise ConfigError(f"the detection table's pretrainings use different input features: {sorted(features)}")
    base = with_changes(_detection_base(indexes["kitti_object"], smoke), {"data.point_features": features.pop()})
    return run_detection_table(base, pretrained, out / "detection", fractions=FRACTIONS, seeds=seeds)
