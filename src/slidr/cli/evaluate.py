"""``slidr evaluate``: per-class IoU of a trained segmentation run (table, JSON and bar chart)."""

from __future__ import annotations

import argparse
from pathlib import Path

from slidr.cli.settings import CommandSettings
from slidr.config import DownstreamConfig

NAME = "evaluate"
HELP = "evaluate a probe/finetune run: per-class IoU table (markdown + JSON) and bar chart"


def run_config(args: argparse.Namespace) -> Path:
    """The ``config.yaml`` of the run folder: the settings being evaluated."""
    from slidr.errors import SlidrError

    config_path = Path(args.run) / "config.yaml"
    if not config_path.is_file():
        raise SlidrError(f"{args.run} is not a probe/finetune run folder (no config.yaml)")
    return config_path


SETTINGS = CommandSettings(DownstreamConfig, config_path=run_config,
                           overrides_help="config overrides, e.g. data.index=other/index.npz trainer.batch_size=4")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run folder of slidr probe / finetune (config.yaml, model.pt)")
    parser.add_argument("--model", metavar="FILE", help="weights to evaluate (default: RUN/model.pt)")
    parser.add_argument("--split", help="split to evaluate (default: the run's data.val_split)")
    parser.add_argument("--out", metavar="DIR", help="where to write the results (default: RUN/eval-SPLIT)")
    parser.add_argument("--name", help="row name in the table (default: the run folder's name)")
    SETTINGS.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.report import per_class_table, write_report
    from slidr.methods.downstream import MODEL_NAME, evaluate_saved_model
    from slidr.utils.io import write_json

    run_dir = Path(args.run)
    cfg: DownstreamConfig = args.settings
    split = args.split or cfg.data.val_split
    evaluation = evaluate_saved_model(args.model or run_dir / MODEL_NAME, cfg, split)
    out = Path(args.out) if args.out else run_dir / f"eval-{split}"
    write_json(out / "evaluation.json", evaluation)
    name = args.name or run_dir.resolve().name
    paths = write_report({name: evaluation}, out, stem="table", title=f"{cfg.data.dataset} {split}")
    print(per_class_table({name: evaluation}), end="")
    print(f"mIoU {evaluation['miou']}  fwIoU {evaluation['fwiou']}  accuracy {evaluation['accuracy']} "
          f"({evaluation['num_points']} points); written to {out} ({paths['chart'].name})")
    return 0
