"""``slidr bench superpixels``: superpixel images/s with 1 and 2 worker processes on real 1600x900 camera images.

Also projects the wall time of all 204,894 nuScenes camera images (34,149 keyframes x 6 cameras) at each rate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from slidr.bench import DEVICE_FLAG, BenchResult, DeviceSetting, cpu_only_notes
from slidr.cli.settings import CommandSettings, Flag
from slidr.config import SuperpixelConfig, at_least, setting, subkey
from slidr.errors import SlidrError

NAME = "superpixels"
HELP = "superpixel images/s with 1 and 2 workers on the real nuScenes keyframe images"
NUSCENES_CAMERA_IMAGES = 204_894


def default_realdata() -> Path:
    """``$SLIDR_REALDATA``, else the first ``shared/realdata`` folder found in the working directory or one of its
    parents (a clone beside ``shared/``), else ``shared/realdata`` (relative: the error then says where it looked)."""
    if os.environ.get("SLIDR_REALDATA"):
        return Path(os.environ["SLIDR_REALDATA"])
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "shared" / "realdata").is_dir():
            return folder / "shared" / "realdata"
    return Path("shared") / "realdata"


@dataclass(frozen=True)
class SuperpixelBenchConfig(DeviceSetting):
    """``slidr bench superpixels``: which images are segmented, how and how often."""

    images: Optional[str] = setting(
        None, help="folder holding CAM_*/ folders of camera images (default: the real nuScenes keyframe, "
                   "<realdata>/nuscenes-keyframe/samples)")
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    copies: int = setting(1, help="segment each image this many times (steadier rates)")

    def validate(self, where: str) -> None:
        at_least(self.copies, 1, subkey(where, "copies"))


SETTINGS = CommandSettings(SuperpixelBenchConfig, flags=[
    Flag("images"), Flag("superpixels.method", choices=("slic", "fh")), Flag("superpixels.n_segments"),
    Flag("copies"), DEVICE_FLAG])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    SETTINGS.add_arguments(parser)


def find_camera_images(folder: str | Path | None) -> list[Path]:
    """The camera images ``folder/CAM_*/*`` (jpg/png); a clear error when there are none."""
    folder = Path(folder) if folder else default_realdata() / "nuscenes-keyframe" / "samples"
    images = sorted(path for path in folder.glob("CAM_*/*") if path.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise SlidrError(f"no camera images found in {folder}/CAM_*/ (the real nuScenes keyframe lives in "
                         f"shared/realdata/nuscenes-keyframe/samples; pass --images FOLDER)")
    return images


def run(args: argparse.Namespace) -> BenchResult:
    from PIL import Image

    from slidr.data.superpixels import SuperpixelJob, compute_index_superpixels, method_key

    cfg: SuperpixelBenchConfig = args.settings
    method, n_segments = cfg.superpixels.method, cfg.superpixels.n_segments
    images = find_camera_images(cfg.images)
    jobs = [SuperpixelJob(path.parent.name, f"{path.stem}_{copy}{path.suffix}", path)
            for copy in range(cfg.copies) for path in images]
    with Image.open(images[0]) as first:
        size = f"{first.width}x{first.height}"
    rows: list[dict] = []
    data: dict[str, Any] = {"images": len(jobs), "image_size": size, "method": method_key(method, n_segments)}
    with tempfile.TemporaryDirectory(prefix="slidr-bench-superpixels-") as tmp:
        for workers in (1, 2):
            report = compute_index_superpixels(jobs, Path(tmp) / f"workers{workers}", method, n_segments,
                                               workers=workers, show_progress=False)
            rate = report["images_per_s"]
            hours = NUSCENES_CAMERA_IMAGES / rate / 3600
            rows.append({"workers": workers, "images": len(jobs), "wall_s": report["wall_s"], "images_per_s": rate,
                         "nuscenes_hours": round(hours, 1)})
            data[f"images_per_s_{workers}"] = rate
            data[f"projected_nuscenes_hours_{workers}"] = round(hours, 2)
            data.update(segments_min=report["segments_min"], segments_median=report["segments_median"],
                        segments_max=report["segments_max"])
    data["speedup_2_workers"] = round(data["images_per_s_2"] / data["images_per_s_1"], 3)
    data["device"] = "cpu"
    notes = [f"{len(jobs)} images of {size}; projected hours are for nuScenes' {NUSCENES_CAMERA_IMAGES:,} camera "
             f"images on this machine; segments per image: {data['segments_min']}-{data['segments_max']}"]
    notes += cpu_only_notes(cfg.device, "superpixels are computed by scikit-image in worker processes")
    return BenchResult(rows, data, notes)
