"""``slidr synth``: generate the procedural driving world as a nuScenes (or SemanticKITTI) dataset."""

from __future__ import annotations

import argparse

from slidr.cli.settings import CommandSettings, Flag, Output, parse_size
from slidr.config import SynthConfig

NAME = "synth"
HELP = "generate a synthetic driving world (lidar + 6 cameras + labels) in nuScenes or SemanticKITTI layout"
SETTINGS = CommandSettings(SynthConfig, flags=[
    Flag("scenes"),
    Flag("frames"),
    Flag("image_size", metavar="WxH", parse=parse_size,
         help="camera image size (default 800x450; 1600x900 is nuScenes' own)"),
    Flag("seed"),
    Flag("workers"),
    Flag("format"),
    Flag("version"),
    Flag("previews", option="--no-preview", negate=True, help="do not write the preview pictures"),
], required=["--out"])
OUTPUTS = [Output("--out", "folder")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="dataset folder to create: absent or empty, or with --overwrite a folder "
                                      "holding a world of slidr synth (required)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the world in --out: only the files slidr synth wrote there (listed in its "
                             "synth_manifest.json) are removed or replaced; your own files stay")
    SETTINGS.add_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from slidr.data.synth import generate_world

    cfg: SynthConfig = args.settings
    summary = generate_world(args.out, scenes=cfg.scenes, frames=cfg.frames, image_size=tuple(cfg.image_size),
                             seed=cfg.seed, workers=cfg.workers, fmt=cfg.format, version=cfg.version,
                             show_progress=not args.no_progress, previews=cfg.previews, overwrite=args.overwrite)
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
