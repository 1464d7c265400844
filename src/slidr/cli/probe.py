"""``slidr probe``: linear probing of a (pretrained) 3D backbone on semantic segmentation."""

from __future__ import annotations

import argparse

NAME = "probe"
HELP = "linear probing: frozen 3D backbone, train a point-wise classifier, evaluate (mIoU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``slidr probe`` and ``slidr finetune``."""
    parser.add_argument("--config", metavar="FILE", help="YAML config, e.g. configs/downstream/probe_nuscenes.yaml")
    parser.add_argument("--out", metavar="DIR", required=True, help="run folder (checkpoints, model.pt, results)")
    parser.add_argument("--pretrained", metavar="FILE",
                        help="pretrained file (slidr pretrain's pretrained.pt or a state dict); 'none' = random init")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides by dotted path, e.g. trainer.epochs=5 data.label_fraction=0.01")


def run(args: argparse.Namespace) -> int:
    return run_mode(args, NAME)


def run_mode(args: argparse.Namespace, mode: str) -> int:
    """Load the config for ``mode``, train, evaluate and print the per-class table."""
    from slidr.analysis.report import per_class_table
    from slidr.methods.downstream import load_downstream_config, run_downstream

    cfg = load_downstream_config(args.config, args.overrides, mode, args.pretrained)
    summary = run_downstream(cfg, args.out, resume=args.resume)
    if summary:
        print(per_class_table({mode: summary["evaluation"]}), end="")
        print(f"results in {args.out}")
    return 0
