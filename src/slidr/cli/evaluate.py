"""``slidr evaluate``: per-class IoU of a trained segmentation run (table, JSON and bar chart)."""

from __future__ import annotations

import argparse
from pathlib import Path

from slidr.cli.settings import CommandSettings, Output
from slidr.config import DownstreamConfig

NAME = "evaluate"
HELP = "evaluate a probe/finetune run: per-class IoU table (markdown + JSON) and bar chart"


def run_config(args: argparse.Namespace) -> Path:
    """The ``config.yaml`` of the run folder: the settings being evaluated.

    Raises
    ------
    UsageError
        ``RUN`` is not a probe / finetune run folder: the message says what it is and what is needed.
    """
    from slidr.engine.checkpoint import DOWNSTREAM_MODES, EXPORT_NAME, describe_folder, folder_kind
    from slidr.errors import UsageError

    run = Path(args.run)
    needed = "slidr evaluate needs the run folder of slidr probe / finetune (config.yaml, model.pt)"
    if not run.is_dir():
        got = "it is a file" if run.exists() else "it does not exist"
        raise UsageError(f"{run} is not a probe/finetune run folder ({got}): {needed}")
    kind = folder_kind(run)
    if kind == "pretraining":
        raise UsageError(f"{run} is {describe_folder(run)}: {needed}; train one on it first: slidr probe "
                         f"--pretrained {run / EXPORT_NAME} --out DIR")
    if kind not in DOWNSTREAM_MODES:
        what = describe_folder(run) if kind else "no config.yaml"
        raise UsageError(f"{run} is not a probe/finetune run folder ({what}): {needed}")
    return run / "config.yaml"


SETTINGS = CommandSettings(DownstreamConfig, config_path=run_config,
                           overrides_help="config overrides, e.g. data.index=other/index.npz trainer.batch_size=4")


def results_folder(args: argparse.Namespace) -> Path:
    """Where the results go: ``--out``, else ``RUN/eval-SPLIT``."""
    if args.out:
        return Path(args.out)
    return Path(args.run) / f"eval-{args.split or args.settings.data.val_split}"


OUTPUTS = [Output("--out", "folder", default=results_folder)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder of slidr probe / finetune (config.yaml, model.pt)")
    parser.add_argument("--model", metavar="FILE", help="weights to evaluate (default: RUN/model.pt)")
    parser.add_argument("--split", help="split to evaluate (default: the run's data.val_split)")
    parser.add_argument("--out", metavar="DIR", help="where to write the results (default: RUN/eval-SPLIT)")
    parser.add_argument("--name", help="row name in the table (default: the run folder's name)")
    SETTINGS.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.report import per_class_table, write_report
    from slidr.errors import SlidrError
    from slidr.methods.downstream import MODEL_NAME, evaluate_saved_model
    from slidr.utils.io import write_json

    run_dir = Path(args.run)
    cfg: DownstreamConfig = args.settings
    split = args.split or cfg.data.val_split
    model = Path(args.model) if args.model else run_dir / MODEL_NAME
    if not args.model and not model.is_file():
        raise SlidrError(f"{run_dir} has no {MODEL_NAME}: its training has not finished (continue it with "
                         f"`slidr {cfg.mode} --out {run_dir} --resume`), or give the weights with --model FILE")
    evaluation = evaluate_saved_model(model, cfg, split)
    out = results_folder(args)
    write_json(out / "evaluation.json", evaluation)
    name = args.name or run_dir.resolve().name
    paths = write_report({name: evaluation}, out, stem="table", title=f"{cfg.data.dataset} {split}")
    print(per_class_table({name: evaluation}), end="")
    print(f"mIoU {evaluation['miou']}  fwIoU {evaluation['fwiou']}  accuracy {evaluation['accuracy']} "
          f"({evaluation['num_points']} points); written to {out} ({paths['chart'].name})")
    return 0
