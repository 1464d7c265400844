"""``slidr prepare kitti-object``: index the KITTI 3D object benchmark (official layout) for detection.

Layout read (the official zips unpacked in one folder, as OpenPCDet and mmdetection3d expect them)::

    ROOT/training/{velodyne/NNNNNN.bin, image_2/NNNNNN.png, calib/NNNNNN.txt, label_2/NNNNNN.txt}
    ROOT/testing/{velodyne, image_2, calib}            (optional)
    ROOT/ImageSets/{train,val,trainval,test,...}.txt   (optional: frame ids, one per line)

Every scan of ``velodyne/`` is a sample; its ``token`` and ``scene`` are ``"training/NNNNNN"`` (or
``"testing/..."``), so that each frame is its own "scene" and the splits list frames. Each ``ImageSets/<name>.txt``
becomes split ``<name>`` (``test`` lists testing frames, the others training frames; ids without a scan are left
out with a warning, so a partial download still indexes). Without ``ImageSets`` the splits are ``train`` = every
training frame and ``test`` = every testing frame, and there is no ``val``: use the usual 3712/3769 split files of
Chen et al. (3DOP), which the KITTI detection literature shares, for a validation split.

Sample content (``format: "kitti_object"``), in the index's column encoding through
:func:`slidr.data.index.write_index`:

- ``lidar`` (float32 x 4 velodyne scan), ``label`` (``label_2`` file or null), ``frame``, ``part``;
- ``calibration``: ``P2`` (3, 4), ``R0_rect`` (3, 3), ``Tr_velo_to_cam`` (3, 4) as in the calib file;
- ``cameras.image_2``: ``image``, ``width``, ``height``, ``intrinsic`` (3, 3) = ``P2[:, :3]`` and
  ``lidar_to_camera`` (4, 4) = (P2's baseline offset) @ ``R0_rect`` @ ``Tr_velo_to_cam``, as the SemanticKITTI
  index has them, so :func:`slidr.data.projection.project_points` projects into image_2;
- ``boxes`` (the label's objects but DontCare, in file order): ``names``, ``lidar`` (K, 7) boxes in the velodyne
  frame (:mod:`slidr.data.boxes` layout), and the raw label fields ``truncated``, ``occluded``, ``alpha``,
  ``bbox`` (K, 4), ``dimensions`` (K, 3) h w l, ``location`` (K, 3), ``rotation_y``;
- ``dontcare``: ``bbox`` (D, 4) of the DontCare regions.

:func:`sample_boxes` and :func:`sample_labels` return a sample's objects as arrays of the documented shapes, also
for frames without objects (whose empty leaves the index may return with another trailing shape, or as lists).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slidr.data.boxes import (
    BOX_DIM,
    KittiLabels,
    kitti_camera_to_lidar,
    kitti_velo_to_rect,
    read_kitti_calibration,
    read_kitti_labels,
)
from slidr.data.index import DatasetIndex, load_index, write_index
from slidr.errors import DataError
from slidr.utils.log import logger

FORMAT = "kitti_object"
PARTS = ("training", "testing")


def prepare_kitti_object(root: str | Path, out: str | Path) -> DatasetIndex:
    """Index a KITTI object dataset at ``root`` (see the module docstring) and write the index to ``out``.

    Returns
    -------
    The written index, loaded.

    Raises
    ------
    DataError
        No ``training/velodyne`` or ``testing/velodyne`` scans, a label without its calibration, or a malformed
        calibration, label or split file (each message names the file).
    """
    root = Path(root).expanduser().resolve()
    parts = [part for part in PARTS if (root / part / "velodyne").is_dir()]
    if not parts:
        raise DataError(f"KITTI object root {root} has no training/velodyne or testing/velodyne folder")
    samples: list[dict] = []
    frames: dict[str, list[str]] = {part: [] for part in PARTS}
    for part in parts:
        folder = root / part
        for scan in sorted((folder / "velodyne").glob("*.bin")):
            frame = scan.stem
            frames[part].append(frame)
            samples.append(_sample(root, folder, part, frame))
    if not samples:
        raise DataError(f"KITTI object root {root} has no scans (training/velodyne/*.bin)")
    scenes = {sample["scene"]: {"description": "", "location": "karlsruhe", "log": sample["part"]}
              for sample in samples}
    header = {"format": FORMAT, "version": "kitti_object", "root": str(root), "scenes": scenes,
              "splits": _splits(root, frames)}
    write_index(out, header, samples)
    logger.info("prepare kitti-object: %d frames (%d labelled, %d boxes) -> %s", len(samples),
                sum(s["label"] is not None for s in samples), sum(len(s["boxes"]["names"]) for s in samples), out)
    return load_index(out)


def _sample(root: Path, folder: Path, part: str, frame: str) -> dict:
    from PIL import Image

    scan = folder / "velodyne" / f"{frame}.bin"
    label = folder / "label_2" / f"{frame}.txt"
    calib_file = folder / "calib" / f"{frame}.txt"
    image = folder / "image_2" / f"{frame}.png"
    sample: dict = {"token": f"{part}/{frame}", "scene": f"{part}/{frame}", "frame": frame, "part": part,
                    "lidar": str(scan.relative_to(root)),
                    "label": str(label.relative_to(root)) if label.is_file() else None, "cameras": {}}
    if not calib_file.is_file():
        if label.is_file():
            raise DataError(f"KITTI label {label} has no calibration file {calib_file}")
        sample["boxes"] = _boxes_entry(KittiLabels(), np.zeros((0, BOX_DIM)))
        sample["dontcare"] = {"bbox": np.zeros((0, 4))}
        return sample
    calibration = read_kitti_calibration(calib_file)
    sample["calibration"] = {key: calibration[key] for key in ("P2", "R0_rect", "Tr_velo_to_cam")}
    velo_to_rect = kitti_velo_to_rect(calibration["R0_rect"], calibration["Tr_velo_to_cam"])
    if image.is_file():
        with Image.open(image) as opened:
            width, height = opened.size
        intrinsic = calibration["P2"][:, :3]
        offset = np.eye(4)
        offset[:3, 3] = np.linalg.solve(intrinsic, calibration["P2"][:, 3])
        sample["cameras"]["image_2"] = {"image": str(image.relative_to(root)), "width": int(width),
                                        "height": int(height), "intrinsic": intrinsic,
                                        "lidar_to_camera": offset @ velo_to_rect}
    labels = read_kitti_labels(label) if label.is_file() else KittiLabels()
    care = np.array([name != "DontCare" for name in labels.type], dtype=bool)
    objects = labels.select(care)
    lidar_boxes = kitti_camera_to_lidar(objects.location, objects.dimensions, objects.rotation_y, velo_to_rect)
    sample["boxes"] = _boxes_entry(objects, lidar_boxes)
    sample["dontcare"] = {"bbox": labels.bbox[~care]}
    return sample


def _boxes_entry(objects: KittiLabels, lidar_boxes: np.ndarray) -> dict:
    return {"names": list(objects.type), "lidar": lidar_boxes, "truncated": objects.truncated,
            "occluded": objects.occluded, "alpha": objects.alpha, "bbox": objects.bbox,
            "dimensions": objects.dimensions, "location": objects.location, "rotation_y": objects.rotation_y}


def _splits(root: Path, frames: dict[str, list[str]]) -> dict[str, list[str]]:
    folder = root / "ImageSets"
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    if not files:
        logger.warning("prepare kitti-object: %s has no ImageSets/*.txt; splits are train = all training frames, "
                       "test = all testing frames (no val split)", root)
        return {name: [f"{part}/{frame}" for frame in frames[part]]
                for name, part in (("train", "training"), ("test", "testing")) if frames[part]}
    splits = {}
    for path in files:
        part = "testing" if path.stem == "test" else "training"
        available = set(frames[part])
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        bad = [frame for frame in ids if not frame.isdigit()]
        if bad:
            raise DataError(f"split file {path}: {bad[0]!r} is not a frame id (one number per line, e.g. 000123)")
        ids = [f"{int(frame):06d}" for frame in ids]
        kept = [f"{part}/{frame}" for frame in ids if frame in available]
        if len(kept) < len(ids):
            logger.warning("prepare kitti-object: %d of %d frames of %s are not in %s/%s/velodyne; left out",
                           len(ids) - len(kept), len(ids), path, root, part)
        splits[path.stem] = kept
    return splits


def sample_boxes(sample: dict) -> tuple[list[str], np.ndarray]:
    """A ``kitti_object`` index sample's objects: ``(names (K,), boxes (K, 7) velodyne frame)``."""
    boxes = sample.get("boxes", {})
    names = [str(name) for name in boxes.get("names", [])]
    lidar = np.asarray(boxes.get("lidar", []), dtype=np.float64).reshape(-1, BOX_DIM)
    return names, lidar


def sample_labels(sample: dict) -> KittiLabels:
    """A ``kitti_object`` index sample's objects (DontCare excluded) as :class:`~slidr.data.boxes.KittiLabels`."""
    boxes = sample.get("boxes", {})

    def column(key: str, width: int = 0, dtype=np.float64) -> np.ndarray:
        values = np.asarray(boxes.get(key, []), dtype=dtype)
        return values.reshape(-1, width) if width else values.reshape(-1)

    return KittiLabels(type=[str(name) for name in boxes.get("names", [])], truncated=column("truncated"),
                       occluded=column("occluded", dtype=np.int64), alpha=column("alpha"), bbox=column("bbox", 4),
                       dimensions=column("dimensions", 3), location=column("location", 3),
                       rotation_y=column("rotation_y"))
