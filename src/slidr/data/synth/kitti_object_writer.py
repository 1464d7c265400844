"""Write frames in the KITTI 3D object layout (``slidr synth --format kitti-object``).

``training/velodyne/NNNNNN.bin`` (float32 x 4: x forward, y left, z up at the lidar, remission in [0, 1]; the
same bytes as the SemanticKITTI layout's scans), ``training/image_2/NNNNNN.png`` (the front camera),
``training/calib/NNNNNN.txt`` (``P0``-``P3`` = ``[K | 0]``, since the one camera is both the reference camera 0
and image_2; ``R0_rect`` = identity, the images being rectified; ``Tr_velo_to_cam``; ``Tr_imu_to_velo`` with the
ego frame as the IMU), ``training/label_2/NNNNNN.txt`` (:func:`slidr.data.synth.annotate.kitti_labels`) and
``ImageSets/{train,val,trainval,parametrizing,verifying}.txt``: the frame ids of the scenes of each split of the
world (the generated splits of :func:`slidr.data.prepare_nuscenes.nuscenes_splits`, by scene, so no scene is in two
splits). Frame ``NNNNNN`` = ``scene * frames_per_scene + frame``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from slidr.data.boxes import KittiLabels, format_kitti_calibration, kitti_velo_to_rect, write_kitti_labels
from slidr.data.synth.kitti_writer import velodyne_to_ego
from slidr.data.synth.sensors import Sensor
from slidr.data.synth.world import SceneConditions

IMAGE_SETS = ("train", "val", "trainval", "parametrizing", "verifying")


def frame_id(scene: int, frame: int, frames_per_scene: int) -> str:
    return f"{scene * frames_per_scene + frame:06d}"


def calibration(camera: Sensor) -> dict[str, np.ndarray]:
    """The calib file's matrices for the front ``camera`` (see the module docstring)."""
    projection = np.hstack([camera.camera_matrix, np.zeros((3, 1))])
    velo_to_cam = np.linalg.inv(camera.to_ego) @ velodyne_to_ego()
    imu_to_velo = np.linalg.inv(velodyne_to_ego())
    return {"P0": projection, "P1": projection, "P2": projection, "P3": projection, "R0_rect": np.eye(3),
            "Tr_velo_to_cam": velo_to_cam[:3], "Tr_imu_to_velo": imu_to_velo[:3]}


def velo_to_rect(calib: dict[str, np.ndarray]) -> np.ndarray:
    """(4, 4) velodyne -> rectified camera of a calibration dict."""
    return kitti_velo_to_rect(calib["R0_rect"], calib["Tr_velo_to_cam"])


def write_frame(root: Path, frame: str, points: np.ndarray, image: np.ndarray, calib: dict[str, np.ndarray],
                labels: KittiLabels) -> None:
    """Write one frame's four files.

    Parameters
    ----------
    root : dataset root (``training/`` is created in it).
    frame : six-digit frame id.
    points : (N, 4) x, y, z (velodyne frame), remission in [0, 1].
    image : (H, W, 3) uint8 front-camera image.
    calib : :func:`calibration`.
    labels : the frame's objects.
    """
    training = root / "training"
    for sub in ("velodyne", "image_2", "calib", "label_2"):
        (training / sub).mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(points, dtype=np.float32).tofile(training / "velodyne" / f"{frame}.bin")
    Image.fromarray(image).save(training / "image_2" / f"{frame}.png", compress_level=1)
    (training / "calib" / f"{frame}.txt").write_text(format_kitti_calibration(calib))
    write_kitti_labels(training / "label_2" / f"{frame}.txt", labels)


def write_image_sets(root: Path, version: str, scenes: list[SceneConditions], frames_per_scene: int) -> None:
    """``ImageSets/<split>.txt``: the frame ids of every scene of each split, one per line."""
    from slidr.data.prepare_nuscenes import nuscenes_splits

    info = {scene.name: {"description": scene.description, "location": scene.location} for scene in scenes}
    splits = nuscenes_splits(version, info, official=False)
    splits["trainval"] = [name for name in info if name in set(splits["train"]) | set(splits["val"])]
    index_of = {scene.name: scene.index for scene in scenes}
    folder = root / "ImageSets"
    folder.mkdir(parents=True, exist_ok=True)
    for split in IMAGE_SETS:
        ids = [frame_id(index_of[name], frame, frames_per_scene) for name in splits.get(split, [])
               for frame in range(frames_per_scene)]
        (folder / f"{split}.txt").write_text("".join(f"{frame}\n" for frame in sorted(ids)))
