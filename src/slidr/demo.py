"""``slidr demo``: SLidR end to end on the embedded synthetic world, on a CPU.

Stages: (1) generate the synthetic world if absent and index it, (2) SLIC superpixels, (3) pretrain with SLidR
and with PPKT† (the small CPU configs of the packaged ``demo/demo.yaml``), (4) linear probing of SLidR, PPKT† and a
randomly initialised network, (5) evaluation: one folder with the comparison table (markdown + JSON), the per-class bar
chart, the pretraining loss curves, a similarity map and a k-NN frame, and ``results.json``.

Honesty rules built in: pretraining and probe training use ``train_split``, the scores are measured on
``eval_split`` only (tune on the ``parametrizing`` / ``verifying`` splits, never on ``val``); the per-pixel class
maps of the synthetic world are never read (only the lidar labels, by the probe and the evaluation); the image
teacher of each pretraining (encoder, weights file or random init) is written into the table and ``results.json``.
Every stage that finished is reused when the demo runs again with the same output folder (the world, its
superpixels, pretrained files, probe runs), so an interrupted demo resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from slidr.config import DemoConfig, DownstreamConfig, PretrainConfig, load_config, to_dict, with_changes
from slidr.errors import SlidrError
from slidr.utils.io import save_figure, write_json
from slidr.utils.log import logger

DEFAULT_CONFIG = "demo/demo.yaml"  # a packaged config
PROBE_RUNS = ("slidr", "ppkt", "random")
DISPLAY_NAMES = {"slidr": "SLidR", "ppkt": "PPKT†", "random": "Random init."}
STAGES = 6
EARLIER_RUN = "an interrupted run of an earlier demo"  # how an interrupted run found in the output folder is named


def run_demo(out: str | Path, cfg: Optional[DemoConfig] = None) -> dict[str, Any]:
    """Run every stage into ``out`` and return what ``out/results.json`` holds.

    Parameters
    ----------
    out : results folder.
    cfg : the demo's settings (default: the packaged ``demo/demo.yaml``), e.g.
        ``load_config(DemoConfig, "demo/demo.yaml", ["scenes=4", "pretrain.*.trainer.epochs=1"])``. The world,
        its index and the splits of ``cfg`` replace ``data.index`` / ``data.train_split`` of its pretraining
        configs and the data and backbone of its probe config.
    """
    start = time.perf_counter()
    if cfg is None:
        cfg = load_config(DemoConfig, DEFAULT_CONFIG)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(number: int, text: str) -> float:
        logger.info("[%d/%d] %s", number, STAGES, text)
        return time.perf_counter()

    began = stage(1, f"synthetic world in {cfg.world}")
    index_path = prepare_world(cfg)
    timings["world_s"] = time.perf_counter() - began

    pretrain_cfgs = {method: with_changes(pretrain_cfg, {"data.index": str(index_path),
                                                         "data.train_split": cfg.train_split})
                     for method, pretrain_cfg in cfg.pretrain.items()}
    began = stage(2, "superpixels")
    superpixels = compute_superpixels(index_path, pretrain_cfgs.values(), cfg.workers)
    timings["superpixels_s"] = time.perf_counter() - began

    pretrained: dict[str, Path] = {}
    pretrain_summaries: dict[str, dict] = {}
    for method, pretrain_cfg in pretrain_cfgs.items():
        began = stage(3, f"pretraining {DISPLAY_NAMES.get(method, method)} ({pretrain_cfg.trainer.epochs} epoch(s))")
        pretrained[method], pretrain_summaries[method] = pretrain(pretrain_cfg, out / f"pretrain-{method}")
        timings[f"pretrain_{method}_s"] = time.perf_counter() - began

    evaluations: dict[str, dict] = {}
    backbone = next(iter(pretrain_cfgs.values())).backbone
    for name in PROBE_RUNS:
        if name != "random" and name not in pretrained:
            continue
        began = stage(4, f"linear probing of {DISPLAY_NAMES[name]}")
        probe_cfg = with_changes(cfg.probe, {
            "mode": "probe", "pretrained": str(pretrained[name]) if name != "random" else None,
            "data.index": str(index_path), "data.train_split": cfg.train_split, "data.val_split": cfg.eval_split,
            "backbone.name": backbone.name, "backbone.in_channels": backbone.in_channels})
        evaluations[name] = probe(probe_cfg, out / f"probe-{name}")
        timings[f"probe_{name}_s"] = time.perf_counter() - began

    began = stage(5, "results: table, charts")
    from slidr.analysis.report import per_class_table, write_report

    runs = {DISPLAY_NAMES[name]: evaluation for name, evaluation in evaluations.items()}
    teachers = {name: pretraining_teacher(pretrain_summaries[name], pretrain_cfgs[name]) if name != "random" else None
                for name in evaluations}
    details = {DISPLAY_NAMES[name]: teacher_columns(teacher) for name, teacher in teachers.items()}
    notes = teacher_notes({DISPLAY_NAMES[name]: teacher for name, teacher in teachers.items()})
    protocol = probe_protocol(cfg.probe)
    report = write_report(runs, out, stem="linear_probe",
                          title=f"Linear probing on the synthetic world ({cfg.eval_split} split; {protocol}), mIoU %",
                          details=details, notes=notes)
    curves = plot_pretraining_curves(pretrain_summaries, out / "pretraining_loss.png")
    timings["report_s"] = time.perf_counter() - began

    began = stage(6, "similarity map and k-NN label transfer")
    analysis = run_analysis(cfg, pretrained.get("slidr"), index_path, out)
    timings["analysis_s"] = time.perf_counter() - began

    results = {
        "linear_probe": {name: {"miou": e["miou"], "fwiou": e["fwiou"], "accuracy": e["accuracy"],
                                "per_class": e["per_class"], "teacher": teachers[name]}
                         for name, e in evaluations.items()},
        "pretraining": {method: {**{key: summary.get(key) for key in
                                    ("initial_loss", "final_loss", "epoch_losses", "epochs", "scans_per_s")},
                                 "teacher": teachers.get(method) or pretraining_teacher(summary, pretrain_cfgs[method])}
                        for method, summary in pretrain_summaries.items()},
        "probe_protocol": protocol,
        "world": {"path": str(Path(cfg.world).resolve()), "scenes": cfg.scenes, "frames": cfg.frames,
                  "image_size": cfg.image_size, "train_split": cfg.train_split, "eval_split": cfg.eval_split},
        "superpixels": superpixels,
        "files": {"table": str(report["markdown"]), "table_json": str(report["json"]),
                  "per_class_chart": str(report["chart"]), "pretraining_loss": str(curves), **analysis["files"],
                  **copy_world_previews(Path(cfg.world), out)},
        "analysis": analysis["results"],
        "config": to_dict(cfg),
        "stage_s": {key: round(value, 1) for key, value in timings.items()},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json(out / "results.json", results)
    print()
    print(f"linear probing: {protocol}")
    print(per_class_table(runs, details), end="")
    print("".join(f"{line}\n" for line in notes), end="")
    print(f"\nslidr demo finished in {results['wall_s']:.0f} s; results in {out.resolve()}")
    return results


def pretraining_teacher(summary: dict, cfg: PretrainConfig) -> Optional[dict[str, Any]]:
    """The image teacher a pretraining distilled: what its ``summary.json`` recorded (``teacher``), or, for a run
    from before slidr recorded it, :func:`~slidr.models.image.describe_teacher` of its config. None: no teacher."""
    if "teacher" in summary:
        return summary["teacher"]
    from slidr.models.image import describe_teacher

    return describe_teacher(cfg.image)


def teacher_columns(teacher: Optional[dict[str, Any]]) -> dict[str, str]:
    """The teacher's cells of the results table: encoder, weights file name, whether it was pretrained ("none" for
    a run without teacher, the random-init probe)."""
    if teacher is None:
        return {"teacher": "none", "teacher weights": "none", "pretrained teacher": "none"}
    weights = Path(teacher["weights_file"]).name if teacher.get("weights_file") else "none (random init)"
    return {"teacher": teacher["encoder"], "teacher weights": weights,
            "pretrained teacher": "yes" if teacher.get("pretrained") else "no"}


def teacher_notes(teachers: dict[str, Optional[dict[str, Any]]]) -> list[str]:
    """One line per distinct teacher weights file under the table: its full path (and package), the runs using it."""
    files: dict[str, list[str]] = {}
    for name, teacher in teachers.items():
        if teacher is not None and teacher.get("weights_file"):
            label = teacher["weights_file"] + (f" (package {teacher['package']})" if teacher.get("package") else "")
            files.setdefault(label, []).append(name)
    return [f"teacher weights of {', '.join(names)}: {label}" for label, names in files.items()]


def probe_protocol(cfg: DownstreamConfig) -> str:
    """How the demo's probe trains, in words: which of slidr's options it uses besides the paper's protocol."""
    parts = ["training scans augmented (rotation, flips)" if cfg.data.augment.enabled else
             "no augmentation" + (", frozen features cached" if cfg.cache_features else ""),
             "features standardised before the linear layer" if cfg.standardize_features else "raw features",
             f"{cfg.data.point_features} input features"]
    paper = cfg.data.augment.enabled and not cfg.standardize_features and cfg.data.point_features == "release"
    return "; ".join(parts) + ("" if paper else " (not the paper's probe protocol: downstream/probe_nuscenes.yaml)")


def prepare_world(cfg: DemoConfig) -> Path:
    """Generate the world (if absent) and its index; returns the index path."""
    from slidr.data.prepare_nuscenes import prepare_nuscenes

    world = Path(cfg.world)
    index_path = world / "index.npz"
    summary_path = world / "synth_summary.json"
    if summary_path.is_file():
        _check_world_matches(cfg, json.loads(summary_path.read_text()), summary_path)
    if index_path.is_file():
        logger.info("reusing %s", world)
        return index_path.resolve()
    if not summary_path.is_file():
        from slidr.data.synth import generate_world

        generate_world(world, scenes=cfg.scenes, frames=cfg.frames, image_size=tuple(cfg.image_size),
                       seed=cfg.seed, workers=cfg.workers)
    summary = json.loads((world / "synth_summary.json").read_text())
    version = summary.get("version", "v1.0-trainval")
    prepare_nuscenes(world, version, index_path)
    return index_path.resolve()


def _check_world_matches(cfg: DemoConfig, summary: dict, path: Path) -> None:
    """A world generated with other settings is never reused silently."""
    wanted = {"scenes": cfg.scenes, "frames_per_scene": cfg.frames, "image_size": list(cfg.image_size),
              "seed": cfg.seed}
    found = {key: summary.get(key) for key in wanted}
    if found != wanted:
        differing = ", ".join(f"{key} {found[key]} (wanted {wanted[key]})" for key in wanted
                              if found[key] != wanted[key])
        raise SlidrError(f"{path}: the world there was generated with other settings: {differing}; delete "
                         f"{path.parent} or set world=<another folder>")


def compute_superpixels(index_path: Path, pretrain_cfgs, workers: int) -> dict[str, Any]:
    """The superpixels the pretraining configs need (:func:`slidr.analysis.runner.compute_superpixels`)."""
    from slidr.analysis.runner import compute_superpixels as compute

    return compute(index_path, pretrain_cfgs, workers)


def pretrain(cfg: PretrainConfig, run_dir: Path) -> tuple[Path, dict]:
    """Pretrain into ``run_dir`` unless it already holds the exported file; returns it and the run's summary."""
    from slidr.analysis.runner import pretrain as run_pretrain

    return run_pretrain(cfg, run_dir, what=EARLIER_RUN)


def probe(cfg: DownstreamConfig, run_dir: Path) -> dict:
    """Linear probing into ``run_dir`` unless it already holds an evaluation; returns the evaluation."""
    from slidr.analysis.runner import downstream

    return downstream(cfg, run_dir, what=EARLIER_RUN)


def plot_pretraining_curves(summaries: dict[str, dict], path: Path) -> Path:
    """Epoch-mean pretraining loss of each method on one chart (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=110)
    for method, summary in summaries.items():
        losses = [value for value in summary.get("epoch_losses") or [] if value is not None]
        if summary.get("initial_loss") is not None:
            axis.plot([0] + list(range(1, len(losses) + 1)), [summary["initial_loss"], *losses], "o-",
                      label=DISPLAY_NAMES.get(method, method))
    axis.set_xlabel("epoch (0: start of the first epoch)")
    axis.set_ylabel("contrastive loss")
    axis.set_title("pretraining loss")
    axis.legend()
    figure.tight_layout()
    return save_figure(figure, path)


def copy_world_previews(world: Path, out: Path) -> dict[str, str]:
    """Copy the world's overview pictures (a scan's bird's-eye view, a camera with projected points) into ``out``."""
    files = {}
    for name in ("bev", "camera_depth"):
        source = world / "preview" / f"{name}.png"
        if source.is_file():
            target = out / f"world_{name}.png"
            target.write_bytes(source.read_bytes())
            files[f"world_{name}"] = str(target)
    return files


def run_analysis(cfg: DemoConfig, pretrained: Optional[Path], index_path: Path, out: Path) -> dict[str, Any]:
    """Similarity map and k-NN transfer on the first evaluation scene; failures are reported, not fatal."""
    from slidr.analysis.knn import knn_sequence
    from slidr.analysis.similarity import similarity_figure
    from slidr.data.index import load_index

    files: dict[str, str] = {}
    results: dict[str, Any] = {}
    if pretrained is None:
        return {"files": files, "results": {"skipped": "no SLidR pretraining in this demo"}}
    index = load_index(index_path)
    positions = index.sample_indices(cfg.eval_split)
    scene = index.splits[cfg.eval_split][0]
    try:
        results["similarity"] = similarity_figure(pretrained, out / "similarity.png", index=str(index_path),
                                                  sample=int(positions[0]), query_class="car", seed=cfg.seed)
        files["similarity"] = str(out / "similarity.png")
    except SlidrError as error:
        logger.warning("warning: similarity map skipped: %s", error)
        results["similarity"] = {"skipped": str(error)}
    try:
        knn = knn_sequence(pretrained, out / "knn", index=str(index_path), scene=scene, max_frames=cfg.knn_frames)
        frame = Path(knn["frame_pngs"][0])
        (out / "knn_frame.png").write_bytes(frame.read_bytes())
        files.update(knn_frame=str(out / "knn_frame.png"), knn_gif=knn["gif"])
        results["knn"] = {key: knn[key] for key in ("scene", "k", "mean_precision", "mean_recall")}
    except SlidrError as error:
        logger.warning("warning: k-NN transfer skipped: %s", error)
        results["knn"] = {"skipped": str(error)}
    return {"files": files, "results": results}
