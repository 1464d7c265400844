"""``slidr synth``: generate the procedural driving world as a nuScenes (or SemanticKITTI) dataset."""

from __future__ import annotations

import argparse

from slidr.errors import SlidrError

NAME = "synth"
HELP = "generate a synthetic driving world (lidar + 6 cameras + labels) in nuScenes or SemanticKITTI layout"


def parse_image_size(text: str) -> tuple[int, int]:
    """``"800x450"`` -> ``(800, 450)``; a clear error otherwise."""
    width, sep, height = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(width), int(height)
    except ValueError:
        raise SlidrError(f"--image-size must look like WIDTHxHEIGHT (e.g. 800x450), got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to create (replaces a previous synthetic "
                                                     "world there; refuses any other non-empty folder)")
    parser.add_argument("--scenes", type=int, default=10, help="number of scenes (default 10)")
    parser.add_argument("--frames", type=int, default=10, help="keyframes per scene, at 2 Hz (default 10)")
    parser.add_argument("--image-size", default="800x450", metavar="WxH",
                        help="camera image size (default 800x450; 1600x900 is nuScenes' own)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same dataset (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes rendering in parallel (default: one per CPU core)")
    parser.add_argument("--format", dest="fmt", choices=("nuscenes", "semantickitti", "kitti-object"),
                        default="nuscenes", help="on-disk layout (default nuscenes; kitti-object: KITTI 3D object "
                                                 "layout, front camera, label_2 boxes)")
    parser.add_argument("--version", default="v1.0-trainval",
                        help="nuScenes version folder name (default v1.0-trainval)")
    parser.add_argument("--no-preview", action="store_true", help="do not write the preview pictures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from slidr.data.synth import generate_world

    summary = generate_world(args.out, scenes=args.scenes, frames=args.frames,
                             image_size=parse_image_size(args.image_size), seed=args.seed, workers=args.workers,
                             fmt=args.fmt, version=args.version, show_progress=not args.no_progress,
                             previews=not args.no_preview)
    print(f"wrote {summary['scenes']} scenes, {summary['samples']} samples ({summary['format']}) to {args.out} "
          f"in {summary['seconds']:.1f} s")
    print(f"points per scan: {summary['points_per_scan']:.0f}; lidar points per camera image: "
          f"{summary['pairs_per_camera']:.0f}")
    width = max(len(name) for name in summary["class_points"])
    total = max(1, sum(summary["class_points"].values()))
    for name, count in sorted(summary["class_points"].items(), key=lambda item: -item[1]):
        print(f"  {name:<{width}}  {count:>10}  {100 * count / total:6.2f}%")
    print(f"summary: {args.out}/synth_summary.json")
    return 0
