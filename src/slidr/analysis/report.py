"""Result tables and charts in the layout of the SLidR paper's per-class Tables 7 and 8.

One row per run (method), the mIoU first, then the IoU of every class in the dataset's order, in percent with one
decimal; a class whose IoU is not available (absent from ground truth and predictions) shows ``n/a``. The same
content is written as JSON, and as a grouped bar chart (one group per class, one bar per run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from slidr.errors import SlidrError
from slidr.utils.io import atomic_write_text, save_figure, write_json


def load_evaluation(path: str | Path) -> dict:
    """The evaluation of a run: ``RUN/evaluation.json``, or a JSON file holding one (``miou`` and ``per_class``).

    Raises
    ------
    SlidrError
        Missing file, or a JSON without ``miou`` / ``per_class``.
    """
    from slidr.engine.checkpoint import EXPORT_NAME, describe_folder, folder_kind
    from slidr.errors import UsageError

    path = Path(path)
    if path.is_dir():
        if folder_kind(path) == "pretraining":
            raise UsageError(f"{path} is {describe_folder(path)}, which has no evaluation; slidr report needs "
                             f"evaluated runs: probe it first (slidr probe --pretrained {path / EXPORT_NAME} --out "
                             "DIR)")
        path = path / "evaluation.json"
    if not path.is_file():
        raise SlidrError(f"{path} does not exist; run `slidr evaluate` (or probe / finetune) first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SlidrError(f"{path} is not valid JSON: {error}") from None
    if "evaluation" in data and "per_class" not in data:
        data = data["evaluation"]
    if "miou" not in data or "per_class" not in data:
        raise SlidrError(f"{path} holds no evaluation (expected keys 'miou' and 'per_class')")
    return data


def per_class_table(runs: Mapping[str, Mapping], details: Optional[Mapping[str, Mapping[str, str]]] = None) -> str:
    """Markdown table: one row per run, columns mIoU then each class (percent, ``n/a`` when not available).

    Parameters
    ----------
    runs : run name -> evaluation (``miou``, ``per_class``); all runs must share the same classes.
    details : run name -> {column: text}, optional
        Text columns shown between the run's name and its mIoU (e.g. the image teacher of a pretraining), in the
        order they first appear; a run without a value shows an empty cell.
    """
    classes = _shared_classes(runs)
    columns = _detail_columns(details)
    header = ["method", *columns, "mIoU", *classes]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * (1 + len(columns)) + ["---:"] * (len(header) - 1 - len(columns))) + "|"]
    for name, evaluation in runs.items():
        text = [str((details or {}).get(name, {}).get(column, "")) for column in columns]
        cells = [name, *text, _cell(evaluation["miou"])] + [_cell(evaluation["per_class"].get(c)) for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_json(runs: Mapping[str, Mapping], details: Optional[Mapping[str, Mapping[str, Any]]] = None) -> dict:
    """The table as JSON: ``classes`` and, per run, ``miou``, ``fwiou``, ``accuracy``, ``per_class`` and, when
    given, ``details`` (the run's entry of ``details``)."""
    classes = _shared_classes(runs)
    table: dict[str, Any] = {"classes": classes, "runs": {
        name: {"miou": e["miou"], "fwiou": e.get("fwiou"), "accuracy": e.get("accuracy"),
               "per_class": {c: e["per_class"].get(c) for c in classes}} for name, e in runs.items()}}
    if details is not None:
        for name, entry in table["runs"].items():
            entry["details"] = dict(details.get(name, {}))
    return table


def _detail_columns(details: Optional[Mapping[str, Mapping[str, Any]]]) -> list[str]:
    columns: list[str] = []
    for entry in (details or {}).values():
        columns += [column for column in entry if column not in columns]
    return columns


def bar_chart(runs: Mapping[str, Mapping], path: str | Path, title: str = "per-class IoU") -> Path:
    """Grouped bars of the per-class IoU of each run (not-available classes drawn as empty), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = _shared_classes(runs)
    width = 0.8 / max(1, len(runs))
    figure, axis = plt.subplots(figsize=(max(8.0, 0.75 * len(classes) + 2), 4.2), dpi=110)
    positions = np.arange(len(classes) + 1)
    for i, (name, evaluation) in enumerate(runs.items()):
        values = [evaluation["miou"]] + [evaluation["per_class"].get(c) for c in classes]
        heights = [np.nan if v is None else v for v in values]
        axis.bar(positions + (i - (len(runs) - 1) / 2) * width, heights, width, label=name)
    axis.set_xticks(positions)
    axis.set_xticklabels(["mIoU", *classes], rotation=45, ha="right")
    axis.set_ylabel("IoU (%)")
    axis.set_ylim(0, 100)
    axis.axvline(0.5, color="grey", lw=0.8)
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def write_report(runs: Mapping[str, Mapping], out: str | Path, stem: str = "results",
                 title: Optional[str] = None, details: Optional[Mapping[str, Mapping[str, str]]] = None,
                 notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``STEM.md`` (table), ``STEM.json`` and ``STEM_per_class.png`` into ``out``; returns their paths.

    ``details``: text columns per run (:func:`per_class_table`); ``notes``: lines written under the markdown table.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = (f"# {title}\n\n" if title else "") + per_class_table(runs, details)
    if notes:
        markdown += "\n" + "".join(f"{line}\n" for line in notes)
    paths = {"markdown": out / f"{stem}.md", "json": out / f"{stem}.json", "chart": out / f"{stem}_per_class.png"}
    atomic_write_text(paths["markdown"], markdown)
    write_json(paths["json"], table_json(runs, details))
    bar_chart(runs, paths["chart"], title=title or "per-class IoU")
    return paths


def _shared_classes(runs: Mapping[str, Mapping]) -> list[str]:
    if not runs:
        raise SlidrError("no run to report")
    class_lists = {name: list(e["per_class"]) for name, e in runs.items()}
    first_name, first = next(iter(class_lists.items()))
    for name, classes in class_lists.items():
        if classes != first:
            raise SlidrError(f"runs {first_name!r} and {name!r} were evaluated on different classes "
                             f"({len(first)} vs {len(classes)}); report runs of one dataset together")
    return first


def _cell(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def run_names(paths: Sequence[str | Path], names: Optional[Sequence[str]] = None) -> list[str]:
    """Display names of runs: ``names`` when given (one per path), else each folder's name."""
    if names:
        if len(names) != len(paths):
            raise SlidrError(f"--names gives {len(names)} names for {len(paths)} runs")
        return list(names)
    labels = [Path(p).name if Path(p).is_dir() else Path(p).parent.name for p in paths]
    if len(set(labels)) != len(labels):
        labels = [str(p) for p in paths]
    return labels
