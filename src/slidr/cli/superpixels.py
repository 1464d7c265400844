"""``slidr superpixels``: compute the superpixels of every camera image of an index (resumable, parallel, sharded)."""

from __future__ import annotations

import argparse

NAME = "superpixels"
HELP = "compute superpixel label images (SLIC or Felzenszwalb), or import masks, for every camera image of an index"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index file written by `slidr prepare`")
    parser.add_argument("--method", choices=("slic", "fh", "masks"), default="slic",
                        help="SLIC (compactness 6, sigma 3) or Felzenszwalb-Huttenlocher (scale 300, sigma 0.35, "
                             "min_size 4000), or import masks computed elsewhere (--from); default slic")
    parser.add_argument("--from", dest="from_dir", metavar="DIR", help="masks: folder of the mask files, "
                        "DIR/<image path without suffix>.{png,npz,npy,json}, or for nuScenes also "
                        "DIR/<CHANNEL>/<image stem>.{png,...} (formats: slidr.data.masks)")
    parser.add_argument("--name", help="masks: name of the mask set, read as superpixels.source (default: DIR's name)")
    parser.add_argument("--fill", choices=("unlabelled", "nearest"), default="unlabelled",
                        help="masks: pixels no mask covers keep id 0, left out of the losses (default), or take "
                             "the nearest mask's id")
    parser.add_argument("--resize-masks", action="store_true",
                        help="masks: resample masks of another size than their image (nearest neighbour)")
    parser.add_argument("--n-segments", type=int, default=150, help="SLIC's target number of segments (default 150)")
    parser.add_argument("--workers", type=int, default=1, help="processes computing in parallel (default 1)")
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="compute only share I of N (0-based), e.g. one task of a cluster job array")
    parser.add_argument("--root", default=None,
                        help="folder of all superpixel variants (default: <index folder>/superpixels)")
    parser.add_argument("--cameras", nargs="+", default=None, help="only these camera channels (default: all)")
    parser.add_argument("--json", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from slidr.data.index import load_index
    from slidr.data.masks import image_sizes, import_index_masks, mask_set_name
    from slidr.data.superpixels import (
        compute_index_superpixels,
        image_jobs,
        legacy_layout_is_unique,
        parse_shard,
        shard_jobs,
        superpixel_dir,
    )
    from slidr.errors import SlidrError
    from slidr.utils.io import write_json
    from slidr.utils.log import logger

    shard = parse_shard(args.shard)
    if (args.method == "masks") != (args.from_dir is not None):
        raise SlidrError("--from DIR goes with --method masks (and only with it)")
    source = mask_set_name(args.from_dir, args.name) if args.method == "masks" else None
    index = load_index(args.index)
    folder = superpixel_dir(args.index, args.method, args.n_segments, args.root, source)
    jobs = shard_jobs(image_jobs(index.samples, index.root, args.cameras), shard)
    report_name = "report.json" if shard[1] == 1 else f"report_shard{shard[0]}of{shard[1]}.json"
    logger.info("%d camera images (shard %d/%d) -> %s", len(jobs), shard[0], shard[1], folder)
    # label PNGs of earlier versions (<CHANNEL>/<stem>.png): converted where that layout gave each image its own file
    convert_legacy = legacy_layout_is_unique(index.format)
    if args.method == "masks":
        report = import_index_masks(jobs, image_sizes(index.samples), args.from_dir, folder, args.fill,
                                    args.resize_masks, args.workers, not args.no_progress, report_name,
                                    convert_legacy=convert_legacy, channel_layout=convert_legacy)
    else:
        report = compute_index_superpixels(jobs, folder, args.method, args.n_segments, args.workers,
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
