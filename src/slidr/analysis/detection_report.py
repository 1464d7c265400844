"""KITTI detection result tables and charts: AP per class and difficulty, one row per run.

The runs are evaluations written by :func:`slidr.methods.detection_eval.kitti_ap`. For each metric (3D, BEV, 2D,
AOS) the markdown table has the moderate mAP first, then easy / moderate / hard for each class, in percent with
one decimal (``n/a`` where a class has no counted ground truth), as detection papers lay out KITTI results. The
same content is written as JSON, and as a grouped bar chart (one panel per metric, one group per class and
difficulty, one bar per run), like :mod:`slidr.analysis.report` does for segmentation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from slidr.analysis.report import _cell
from slidr.errors import SlidrError
from slidr.utils.io import atomic_write_text, save_figure, write_json

METRIC_TITLES = {"3d": "3D", "bev": "BEV", "bbox": "2D", "aos": "AOS"}
SHORT_DIFFICULTY = {"easy": "easy", "moderate": "mod.", "hard": "hard"}


def load_detection_evaluation(path: str | Path) -> dict:
    """A run's KITTI evaluation: ``RUN/evaluation.json`` or a JSON file holding a :func:`kitti_ap` result (also
    nested under ``"evaluation"``).

    Raises
    ------
    SlidrError
        Missing file, invalid JSON, or no ``ap`` / ``recall_positions`` in it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "evaluation.json"
    if not path.is_file():
        raise SlidrError(f"{path} does not exist; evaluate the detector first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SlidrError(f"{path} is not valid JSON: {error}") from None
    if "evaluation" in data and "ap" not in data:
        data = data["evaluation"]
    if not isinstance(data, dict) or "ap" not in data or "recall_positions" not in data:
        raise SlidrError(f"{path} holds no KITTI detection evaluation (expected keys 'ap' and 'recall_positions')")
    return data


def detection_table(runs: Mapping[str, Mapping], metric: str = "3d") -> str:
    """Markdown table of one metric: a row per run; moderate mAP, then easy / moderate / hard of each class."""
    layout = _shared_layout(runs, metric)
    header = ["method", "mAP (mod.)"] + [f"{c} {SHORT_DIFFICULTY.get(d, d)}" for c in layout["classes"]
                                         for d in layout["difficulties"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, result in runs.items():
        cells = [name, _cell(result["map"][metric]["moderate"])]
        cells += [_cell(result["ap"][metric][c][d]) for c in layout["classes"] for d in layout["difficulties"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def detection_markdown(runs: Mapping[str, Mapping], title: Optional[str] = None,
                       metrics: Optional[Sequence[str]] = None) -> str:
    """Every metric's table under a heading (``3D AP|R40``, ...), with the settings and the small-sample notes."""
    metrics = _metrics(runs, metrics)
    first = next(iter(runs.values()))
    parts = [f"# {title}\n"] if title else []
    for metric in metrics:
        parts.append(f"## {METRIC_TITLES.get(metric, metric)} AP|R{first['recall_positions']}\n\n"
                     + detection_table(runs, metric))
    settings = {name: _settings(result) for name, result in runs.items()}
    if len(set(settings.values())) == 1:
        parts.append(f"Overlap thresholds: {next(iter(settings.values()))}.\n")
    else:
        parts.append("Overlap thresholds:\n\n" + "\n".join(f"- {n}: {s}" for n, s in settings.items()) + "\n")
    notes = [f"- {name}: {note}" for name, result in runs.items() for note in result.get("notes", [])]
    if notes:
        parts.append("Notes:\n\n" + "\n".join(notes) + "\n")
    return "\n".join(parts)


def _settings(result: Mapping) -> str:
    thresholds = ", ".join(f"{c} " + "/".join(sorted({f"{x:g}" for x in v.values()}))
                           for c, v in result.get("min_overlaps", {}).items())
    return (f"{thresholds}; {result.get('num_frames', '?')} frames; "
            f"convention {result.get('convention', 'devkit')}")


def detection_json(runs: Mapping[str, Mapping]) -> dict:
    """The tables as JSON: the layout, and per run ``ap``, ``map``, ``map_moderate``, ``num_gt``, ``notes``."""
    metrics = _metrics(runs, None)
    layout = _shared_layout(runs, metrics[0])
    return {"recall_positions": layout["recall_positions"], "classes": layout["classes"],
            "difficulties": layout["difficulties"], "metrics": metrics,
            "runs": {name: {"ap": {m: r["ap"][m] for m in metrics}, "map": {m: r["map"][m] for m in metrics},
                            "map_moderate": {m: r["map"][m]["moderate"] for m in metrics},
                            "num_gt": r.get("num_gt"), "notes": r.get("notes", [])}
                     for name, r in runs.items()}}


def detection_bar_chart(runs: Mapping[str, Mapping], path: str | Path, metrics: Optional[Sequence[str]] = None,
                        title: str = "KITTI AP") -> Path:
    """Grouped bars, one panel per metric: the moderate mAP, then every class x difficulty; a bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _metrics(runs, metrics)
    layout = _shared_layout(runs, metrics[0])
    labels = ["mAP mod."] + [f"{c} {SHORT_DIFFICULTY.get(d, d)}" for c in layout["classes"]
                             for d in layout["difficulties"]]
    width = 0.8 / max(1, len(runs))
    figure, axes = plt.subplots(len(metrics), 1, figsize=(max(8.0, 0.7 * len(labels) + 2), 3.2 * len(metrics)),
                                dpi=110, squeeze=False)
    positions = np.arange(len(labels))
    for axis, metric in zip(axes[:, 0], metrics):
        for i, (name, result) in enumerate(runs.items()):
            values = [result["map"][metric]["moderate"]] + [result["ap"][metric][c][d] for c in layout["classes"]
                                                            for d in layout["difficulties"]]
            heights = [np.nan if v is None else v for v in values]
            axis.bar(positions + (i - (len(runs) - 1) / 2) * width, heights, width, label=name)
        axis.set_xticks(positions)
        axis.set_xticklabels(labels, rotation=45, ha="right")
        axis.set_ylabel(f"{METRIC_TITLES.get(metric, metric)} AP|R{layout['recall_positions']} (%)")
        axis.set_ylim(0, 100)
        axis.axvline(0.5, color="grey", lw=0.8)
        axis.legend(fontsize=8)
    axes[0, 0].set_title(title)
    figure.tight_layout()
    return save_figure(figure, path)


def write_detection_report(runs: Mapping[str, Mapping], out: str | Path, stem: str = "detection",
                           title: Optional[str] = None, metrics: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """Write ``STEM.md`` (a table per metric), ``STEM.json`` and ``STEM_ap.png`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / f"{stem}.md", "json": out / f"{stem}.json", "chart": out / f"{stem}_ap.png"}
    atomic_write_text(paths["markdown"], detection_markdown(runs, title, metrics))
    write_json(paths["json"], detection_json(runs))
    detection_bar_chart(runs, paths["chart"], metrics, title=title or "KITTI AP")
    return paths


def _metrics(runs: Mapping[str, Mapping], metrics: Optional[Sequence[str]]) -> list[str]:
    if not runs:
        raise SlidrError("no run to report")
    shared = [m for m in next(iter(runs.values()))["ap"] if all(m in r["ap"] for r in runs.values())]
    if metrics is None:
        order = ["3d", "bev", "bbox", "aos"]
        return sorted(shared, key=lambda m: order.index(m) if m in order else len(order))
    missing = [m for m in metrics if m not in shared]
    if missing:
        raise SlidrError(f"metric(s) {missing} are not in every run's evaluation (shared: {shared})")
    return list(metrics)


def _shared_layout(runs: Mapping[str, Mapping], metric: str) -> dict:
    if not runs:
        raise SlidrError("no run to report")
    layouts = {name: {"classes": list(r["ap"][metric]) if metric in r["ap"] else None,
                      "difficulties": list(r.get("difficulties", ["easy", "moderate", "hard"])),
                      "recall_positions": r["recall_positions"]} for name, r in runs.items()}
    first_name, first = next(iter(layouts.items()))
    for name, layout in layouts.items():
        if layout["classes"] is None:
            raise SlidrError(f"run {name!r} has no {metric!r} evaluation")
        if layout != first:
            raise SlidrError(f"runs {first_name!r} and {name!r} were evaluated differently (classes, difficulties "
                             "or recall positions); report runs evaluated alike together")
    return first
