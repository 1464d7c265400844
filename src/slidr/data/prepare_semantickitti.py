"""``slidr prepare semantickitti``: index SemanticKITTI sequences (scans, labels, calibration, poses, images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slidr.data.index import DatasetIndex, load_index, write_index
from slidr.data.splits import SEMANTICKITTI_SPLITS
from slidr.data.transforms import invert_rigid, rigid_transform
from slidr.errors import DataError
from slidr.utils.log import logger


def prepare_semantickitti(root: str | Path, out: str | Path) -> DatasetIndex:
    """Index SemanticKITTI sequences (scans, labels, calibration, poses, left colour images) and write ``out``.

    Layout: ``<root>/sequences/<NN>/velodyne/<frame>.bin``, optional ``labels/<frame>.label``, ``calib.txt``
    (``P2``, ``Tr``), ``poses.txt`` and ``image_2/<frame>.png``. ``lidar_to_global`` = ``inv(Tr) @ pose @ Tr``
    (the pose is camera 0's) where poses and calibration exist; ``image_2`` is indexed where the image and ``P2``
    exist, with ``lidar_to_camera`` = the P2 baseline offset composed with ``Tr``.

    Parameters
    ----------
    root : the dataset folder (holding ``sequences/``) or the ``sequences`` folder itself.
    out : the index file to write (conventionally ``index.npz``).

    Returns
    -------
    The written index, loaded.
    """
    header, samples = collect_semantickitti(root)
    write_index(out, header, samples)
    logger.info("prepare semantickitti: %d scans of %d sequences (%d labelled) -> %s", len(samples),
                len(header["scenes"]), sum(s["labels"] is not None for s in samples), out)
    return load_index(out)


def collect_semantickitti(root: str | Path) -> tuple[dict, list[dict]]:
    """The header and the sample dicts of a SemanticKITTI index (what :func:`prepare_semantickitti` writes).

    Parameters
    ----------
    root : the dataset folder (holding ``sequences/``) or the ``sequences`` folder itself.

    Returns
    -------
    ``(header, samples)``: ``format``, ``version``, ``root``, ``scenes`` (sequences), ``splits``; one dict per
    scan, in sequence then frame order.
    """
    from PIL import Image

    root = Path(root).resolve()
    sequences_folder = _kitti_sequences_folder(root)
    samples, scenes = [], {}
    for folder in sorted(p for p in sequences_folder.iterdir() if p.is_dir() and p.name.isdigit()):
        scans = sorted((folder / "velodyne").glob("*.bin"))
        if not scans:
            continue
        sequence = folder.name
        scenes[sequence] = {"description": "", "location": "karlsruhe", "log": sequence}
        calibration = _read_kitti_calibration(folder / "calib.txt") if (folder / "calib.txt").is_file() else {}
        lidar_to_cam0 = rigid_transform(np.eye(3), np.zeros(3))
        if "Tr" in calibration:
            lidar_to_cam0[:3, :] = calibration["Tr"].reshape(3, 4)
        poses = _read_kitti_poses(folder / "poses.txt", len(scans)) if (folder / "poses.txt").is_file() else None
        image_size = None
        for position, scan in enumerate(scans):
            frame = scan.stem
            labels = folder / "labels" / f"{frame}.label"
            entry: dict = {
                "token": f"{sequence}/{frame}",
                "scene": sequence,
                "frame": frame,
                "lidar": str(scan.relative_to(root)),
                "labels": str(labels.relative_to(root)) if labels.is_file() else None,
                "cameras": {},
            }
            if poses is not None and "Tr" in calibration:
                entry["lidar_to_global"] = invert_rigid(lidar_to_cam0) @ poses[position] @ lidar_to_cam0
            image = folder / "image_2" / f"{frame}.png"
            if "P2" in calibration and image.is_file():
                if image_size is None:
                    with Image.open(image) as opened:
                        image_size = opened.size
                projection = calibration["P2"].reshape(3, 4)
                intrinsic = projection[:, :3]
                offset = rigid_transform(np.eye(3), np.linalg.solve(intrinsic, projection[:, 3]))
                entry["cameras"]["image_2"] = {
                    "image": str(image.relative_to(root)),
                    "width": int(image_size[0]),
                    "height": int(image_size[1]),
                    "intrinsic": intrinsic,
                    "lidar_to_camera": offset @ lidar_to_cam0,
                }
            samples.append(entry)
    if not samples:
        raise DataError(f"SemanticKITTI root {root} has no scans (sequences/NN/velodyne/*.bin)")
    splits = {split: [name for name in members if name in scenes] for split, members in SEMANTICKITTI_SPLITS.items()}
    header = {"format": "semantickitti", "version": "semantickitti", "root": str(root), "scenes": scenes,
              "splits": splits}
    return header, samples


def _read_kitti_calibration(path: Path) -> dict[str, np.ndarray]:
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, numbers = line.partition(":")
        try:
            values[key.strip()] = np.array([float(x) for x in numbers.split()], dtype=np.float64)
        except ValueError:
            raise DataError(f"calibration file {path} line {number}: not a list of numbers") from None
    for key in ("P2", "Tr"):
        if key in values and values[key].size != 12:
            raise DataError(f"calibration file {path}: {key} has {values[key].size} numbers, expected 12")
    return values


def _read_kitti_poses(path: Path, count: int) -> np.ndarray:
    try:
        poses = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise DataError(f"poses file {path} is malformed: {error}") from None
    if poses.shape != (count, 12):
        raise DataError(f"poses file {path} has {poses.shape[0]} poses of {poses.shape[1]} numbers; "
                        f"expected {count} poses (one per scan) of 12")
    matrices = np.tile(np.eye(4), (count, 1, 1))
    matrices[:, :3, :] = poses.reshape(count, 3, 4)
    return matrices


def _kitti_sequences_folder(root: Path) -> Path:
    if (root / "sequences").is_dir():
        return root / "sequences"
    if any(child.is_dir() and child.name.isdigit() for child in root.iterdir()):
        return root
    raise DataError(f"SemanticKITTI root {root} has no sequences/ folder")

