"""``slidr knn``: k-NN label transfer through a sequence with pretrained 3D features (the seed's A.1 video)."""

from __future__ import annotations

import argparse

NAME = "knn"
HELP = "k-NN label transfer from a sequence's first frame: PNG frames, animated GIF, precision/recall JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slidr.analysis.knn import DEFAULT_CLASSES

    parser.add_argument("--pretrained", required=True, metavar="FILE", help="exported pretraining (pretrained.pt)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--index", help="dataset index (default: the pretraining's data.index)")
    parser.add_argument("--scene", help="scene / sequence (default: the first scene of the val split)")
    parser.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES),
                        help=f"classes to transfer (default: {' '.join(DEFAULT_CLASSES)})")
    parser.add_argument("-k", type=int, default=20, help="neighbours (default 20)")
    parser.add_argument("--camera", default="CAM_FRONT", help="camera of the overlay; 'none' for bird's-eye only")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")


def run(args: argparse.Namespace) -> int:
    from slidr.analysis.knn import knn_sequence

    camera = None if args.camera.lower() == "none" else args.camera
    result = knn_sequence(args.pretrained, args.out, index=args.index, scene=args.scene, classes=args.classes,
                          k=args.k, camera=camera, max_frames=args.max_frames)
    print(f"scene {result['scene']}: {len(result['frames'])} frames transferred from {result['database_token']}")
    for name in result["classes"]:
        precision, recall = result["mean_precision"][name], result["mean_recall"][name]
        print(f"  {name:12s} precision {_fmt(precision)}  recall {_fmt(recall)}")
    print(f"written {args.out}/knn.gif and knn.json ({result['seconds']} s)")
    return 0


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{value:.3f}"
