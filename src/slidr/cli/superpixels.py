"""``slidr superpixels``: compute the superpixels of every camera image of an index (resumable, parallel, sharded)."""

from __future__ import annotations

import argparse
from typing import cast

from slidr.cli.settings import CommandSettings, Flag, Output
from slidr.config import SuperpixelJobConfig

NAME = "superpixels"
HELP = "compute superpixel label images (SLIC or Felzenszwalb), or import masks, for every camera image of an index"
SETTINGS = CommandSettings(SuperpixelJobConfig, flags=[
    Flag("index"),
    Flag("superpixels.method", choices=("slic", "fh", "masks")),
    Flag("from_dir", option="--from", metavar="DIR"),
    Flag("superpixels.source", option="--name",
         help="masks: name of the mask set, read as superpixels.source (default: DIR's name)"),
    Flag("fill"),
    Flag("resize_masks"),
    Flag("superpixels.n_segments"),
    Flag("workers"),
    Flag("shard", metavar="I/N"),
    Flag("superpixels.root"),
    Flag("cameras"),
])




def _superpixel_folder(args: argparse.Namespace):
    from slidr.data.masks import mask_set_name
    from slidr.data.superpixels import superpixel_dir

    cfg: SuperpixelJobConfig = args.settings
    sp = cfg.superpixels
    # the config holds from_dir exactly when the method is masks
    source = mask_set_name(cast(str, cfg.from_dir), sp.source) if sp.method == "masks" else None
    return superpixel_dir(cfg.index, sp.method, sp.n_segments, sp.root, source)


OUTPUTS = [Output("superpixel folder", "folder", default=_superpixel_folder), Output("--json", "file")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from slidr.config import parse_shard
    from slidr.data.index import load_index
    from slidr.data.masks import image_sizes, import_index_masks, mask_set_name
    from slidr.data.superpixels import (
        compute_index_superpixels,
        image_jobs,
        legacy_layout_is_unique,
        shard_jobs,
        superpixel_dir,
    )
    from slidr.utils.io import write_json
    from slidr.utils.log import logger

    cfg: SuperpixelJobConfig = args.settings
    sp = cfg.superpixels
    shard = parse_shard(cfg.shard)
    source = mask_set_name(cast(str, cfg.from_dir), sp.source) if sp.method == "masks" else None  # see above
    index = load_index(cfg.index)
    folder = superpixel_dir(cfg.index, sp.method, sp.n_segments, sp.root, source)
    jobs = shard_jobs(image_jobs(index.samples, index.root, cfg.cameras), shard)
    report_name = "report.json" if shard[1] == 1 else f"report_shard{shard[0]}of{shard[1]}.json"
    logger.info("%d camera images (shard %d/%d) -> %s", len(jobs), shard[0], shard[1], folder)
    # label PNGs of earlier versions (<CHANNEL>/<stem>.png): converted where that layout gave each image its own file
    convert_legacy = legacy_layout_is_unique(index.format)
    if sp.method == "masks":
        report = import_index_masks(jobs, image_sizes(index.samples), cast(str, cfg.from_dir), folder, cfg.fill,
                                    cfg.resize_masks, cfg.workers, not args.no_progress, report_name,
                                    convert_legacy=convert_legacy, channel_layout=convert_legacy)
    else:
        report = compute_index_superpixels(jobs, folder, sp.method, sp.n_segments, cfg.workers,
                                           show_progress=not args.no_progress, report_name=report_name,
                                           convert_legacy=convert_legacy)
    rate = f", {report['images_per_s']:.2f} images/s" if report["images_per_s"] else ""
    converted = f", {report['converted']} converted from label PNGs of an earlier version" \
        if report["converted"] else ""
    print(f"{report['images']} images: {report['computed']} computed{converted}, {report['skipped']} already "
          f"done{rate}")
    if report["images"]:
        print(f"segments per image: min {report['segments_min']}, median {report['segments_median']}, "
              f"max {report['segments_max']}")
        print(f"report: {folder / report_name}")
    if args.json:
        write_json(args.json, report)
    return 0
