"""``slidr prepare nuscenes|semantickitti``: index a dataset once, so training and evaluation read only the index."""

from __future__ import annotations

import argparse

NAME = "prepare"
HELP = "index a dataset (nuScenes keyframes or SemanticKITTI scans) into one JSON file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    subparsers = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    nuscenes = subparsers.add_parser("nuscenes", help="index a nuScenes dataroot (devkit layout)",
                                     description="index the keyframes of a nuScenes dataroot (devkit layout)")
    nuscenes.add_argument("--dataroot", required=True, help="folder holding <version>/*.json and samples/")
    nuscenes.add_argument("--version", default="v1.0-trainval",
                          help="table folder name: v1.0-trainval (default), v1.0-test, v1.0-mini, ...")
    nuscenes.add_argument("--out", required=True, help="index file to write")
    nuscenes.add_argument("--splits", choices=("auto", "official", "stratified"), default="auto",
                          help="official devkit splits, stratified generated ones, or auto (stratified for the "
                               "synthetic world and unknown scenes; default)")
    kitti = subparsers.add_parser("semantickitti", help="index SemanticKITTI sequences",
                                  description="index SemanticKITTI sequences (scans, labels, calibration, poses)")
    kitti.add_argument("--root", required=True, help="dataset folder holding sequences/ (or the sequences folder)")
    kitti.add_argument("--out", required=True, help="index file to write")
    objects = subparsers.add_parser("kitti-object", help="index the KITTI 3D object benchmark (boxes)",
                                    description="index KITTI 3D object frames: training/{velodyne,image_2,calib,"
                                                "label_2}, optional testing/ and ImageSets/*.txt splits")
    objects.add_argument("--root", required=True, help="folder holding training/ (and testing/, ImageSets/)")
    objects.add_argument("--out", required=True, help="index file to write")


def run(args: argparse.Namespace) -> int:
    from slidr.data.prepare_nuscenes import prepare_nuscenes
    from slidr.data.prepare_semantickitti import prepare_semantickitti

    if args.dataset == "nuscenes":
        index = prepare_nuscenes(args.dataroot, args.version, args.out, args.splits)
    elif args.dataset == "kitti-object":
        from slidr.data.prepare_kitti_object import prepare_kitti_object

        index = prepare_kitti_object(args.root, args.out)
    else:
        index = prepare_semantickitti(args.root, args.out)
    print(f"wrote {args.out}: {len(index.samples)} samples, {len(index.scenes)} scenes; splits: "
          + ", ".join(f"{name} {len(scenes)}" for name, scenes in index.splits.items()))
    return 0
