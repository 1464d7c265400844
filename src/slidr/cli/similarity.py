"""``slidr similarity``: the seed's Figures 4 and 5, similarity of a query point's 3D feature with 2D and 3D features."""

from __future__ import annotations

import argparse
import json

NAME = "similarity"
HELP = "similarity maps of a query lidar point with the image features and the other points' features (PNG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", required=True, metavar="FILE", help="exported pretraining (pretrained.pt)")
    parser.add_argument("--out", required=True, metavar="PNG", help="picture to write")
    parser.add_argument("--index", help="dataset index (default: the pretraining's data.index)")
    parser.add_argument("--sample", type=int, default=0, help="position of the sample in the index (default 0)")
    parser.add_argument("--camera", help="camera channel (default: the pretraining's first camera)")
    query = parser.add_mutually_exclusive_group()
    query.add_argument("--point", type=int, metavar="I",
                       help="query: the I-th point among those that project into the image")
    query.add_argument("--pixel", type=int, nargs=2, metavar=("ROW", "COL"),
                       help="query: the projected point nearest to this pixel (of the network's input image)")
    query.add_argument("--class", dest="query_class", metavar="NAME", help="query: a random point of this class")
    parser.add_argument("--seed", type=int, default=0, help="seed of random queries")


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.similarity import similarity_figure

    result = similarity_figure(args.pretrained, args.out, index=args.index, sample=args.sample, camera=args.camera,
                               query_index=args.point, query_pixel=tuple(args.pixel) if args.pixel else None,
                               query_class=args.query_class, seed=args.seed)
    print(json.dumps(result, indent=2))
    return 0
