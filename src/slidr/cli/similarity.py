"""``slidr similarity``: the seed's Figures 4 and 5, similarity of a query point's 3D feature with 2D and 3D
features."""

from __future__ import annotations

import argparse
import json

from slidr.cli.settings import CommandSettings, Flag, Output
from slidr.config import SimilarityConfig

NAME = "similarity"
HELP = "similarity maps of a query lidar point with the image features and the other points' features (PNG)"
SETTINGS = CommandSettings(SimilarityConfig, flags=[
    Flag("pretrained", metavar="FILE"),
    Flag("index"),
    Flag("sample"),
    Flag("camera"),
    Flag("point", metavar="I", group="query"),
    Flag("pixel", nargs=2, metavar=("ROW", "COL"), group="query"),
    Flag("query_class", option="--class", metavar="NAME", group="query"),
    Flag("seed"),
], required=["--out"])
OUTPUTS = [Output("--out", "file")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="PNG", help="picture to write (required)")
    SETTINGS.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.similarity import similarity_figure

    cfg: SimilarityConfig = args.settings
    result = similarity_figure(cfg.pretrained, args.out, index=cfg.index, sample=cfg.sample, camera=cfg.camera,
                               query_index=cfg.point, query_pixel=(cfg.pixel[0], cfg.pixel[1]) if cfg.pixel else None,
                               query_class=cfg.query_class, seed=cfg.seed)
    print(json.dumps(result, indent=2))
    return 0
