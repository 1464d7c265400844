"""``slidr knn``: k-NN label transfer through a sequence with pretrained 3D features (the seed's A.1 video)."""

from __future__ import annotations

import argparse
from pathlib import Path

from slidr.cli.settings import CommandSettings, Flag, Output, none_or_text
from slidr.config import KnnConfig

NAME = "knn"
HELP = "k-NN label transfer from a sequence's first frame: PNG frames, animated GIF, precision/recall JSON"
SETTINGS = CommandSettings(KnnConfig, flags=[
    Flag("pretrained", metavar="FILE"),
    Flag("index"),
    Flag("scene"),
    Flag("classes"),
    Flag("k", option="-k", metavar="K"),
    Flag("camera", parse=none_or_text("none")),
    Flag("max_frames"),
], required=["--out"])
OUTPUTS = [Output("--out", "folder")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", help="output folder (required)")
    SETTINGS.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.knn import knn_sequence

    cfg: KnnConfig = args.settings
    result = knn_sequence(cfg.pretrained, args.out, index=cfg.index, scene=cfg.scene, classes=cfg.classes, k=cfg.k,
                          camera=cfg.camera, max_frames=cfg.max_frames)
    print(f"scene {result['scene']}: {len(result['frames'])} frames transferred from {result['database_token']}")
    for name in result["classes"]:
        precision, recall = result["mean_precision"][name], result["mean_recall"][name]
        print(f"  {name:12s} precision {_fmt(precision)}  recall {_fmt(recall)}")
    print(f"written {Path(args.out) / 'knn.gif'} and knn.json ({result['seconds']} s)")
    return 0


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{value:.3f}"
