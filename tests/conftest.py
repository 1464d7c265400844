"""Shared test fixtures: real sensor data (skipped when absent) and thread settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REALDATA = Path(os.environ.get("SLIDR_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))

# pytest-xdist runs one process per core: one torch thread each keeps them from fighting over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the ``realdata`` fixture (directly or through one built on it, such as
    ``nuscenes_keyframe``) carries the ``realdata`` marker, so ``-m "not realdata"`` leaves all of them out."""
    for item in items:
        if "realdata" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(scope="session")
def realdata() -> Path:
    """``../shared/realdata`` (or $SLIDR_REALDATA); tests using it are skipped where it is absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real sensor data not found at {REALDATA} (a fresh clone has no ../shared/realdata)")
    return REALDATA


@pytest.fixture(scope="session")
def nuscenes_keyframe(realdata: Path) -> Path:
    """The real nuScenes v1.0-mini keyframe in devkit layout."""
    path = realdata / "nuscenes-keyframe"
    if not (path / "v1.0-mini").is_dir():
        pytest.skip(f"{path} has no v1.0-mini tables")
    return path


@pytest.fixture(scope="session")
def semantickitti_scans(realdata: Path) -> Path:
    """Folder holding SemanticKITTI sequence 00 scans 000000-000002 with their .label files beside them."""
    path = realdata / "SqueezeSegV3" / "sample_data" / "sequences" / "00" / "velodyne"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


# --- synthetic worlds (slidr.data.synth) ---------------------------------------------------------------------------
TINY_WORLD = {"scenes": 2, "frames": 3, "image_size": (320, 180), "seed": 7}


@pytest.fixture(scope="session")
def tiny_nuscenes_world(tmp_path_factory) -> Path:
    """Dataroot of a tiny synthetic nuScenes world (``TINY_WORLD``: 2 scenes x 3 keyframes, 6 cameras at 320x180,
    version ``v1.0-trainval``), generated once per test session."""
    from slidr.data.synth import generate_world

    out = tmp_path_factory.mktemp("synth") / "nuscenes"
    generate_world(out, workers=1, fmt="nuscenes", show_progress=False, **TINY_WORLD)
    return out


@pytest.fixture(scope="session")
def tiny_kitti_world(tmp_path_factory) -> Path:
    """Root of the same tiny world in SemanticKITTI layout (``sequences/00``, ``sequences/01``; 3 frames each,
    image_2 at 320x180), generated once per test session."""
    from slidr.data.synth import generate_world

    out = tmp_path_factory.mktemp("synth") / "semantickitti"
    generate_world(out, workers=1, fmt="semantickitti", show_progress=False, **TINY_WORLD)
    return out


@pytest.fixture(scope="session")
def tiny_kitti_object_world(tmp_path_factory) -> Path:
    """Root of the same tiny world in KITTI 3D object layout (``training/{velodyne,image_2,calib,label_2}``, frames
    000000-000005, ``ImageSets``; both scenes are in ``train``), generated once per test session."""
    from slidr.data.synth import generate_world

    out = tmp_path_factory.mktemp("synth") / "kitti_object"
    generate_world(out, workers=1, fmt="kitti-object", show_progress=False, previews=False, **TINY_WORLD)
    return out


@pytest.fixture(scope="session")
def tiny_kitti_object_index(tiny_kitti_object_world: Path) -> Path:
    """The ``slidr prepare kitti-object`` index of ``tiny_kitti_object_world`` (``index.npz`` beside it)."""
    from slidr.data.prepare_kitti_object import prepare_kitti_object

    path = tiny_kitti_object_world.parent / "kitti_object_index.npz"
    prepare_kitti_object(tiny_kitti_object_world, path)
    return path


# --- hand-made paired samples for the pretraining modules (test_pretrain.py, test_successor_methods.py) ------------
PAIRED_HEIGHT, PAIRED_WIDTH, PAIRED_CAMERAS = 32, 48, 2


def tiny_pretrain_config(method: str = "slidr", *overrides: str):
    """A small :class:`PretrainConfig` of ``method``: half-width MinkUNet14, small convnet teacher, batch of 2,
    cartesian voxels of 0.5 m; ``overrides`` are ``key=value`` texts applied last."""
    from slidr.config import PretrainConfig, load_config

    return load_config(PretrainConfig, None, [f"method={method}", "backbone.name=minkunet14_half",
                                              "image.encoder=convnet_small", "trainer.batch_size=2",
                                              "data.voxel.mode=cartesian", "data.voxel.size=0.5", *overrides])


def paired_sample(seed: int, pairs: int = 300, unmasked_corner: bool = False) -> dict:
    """One hand-made pretraining sample (the keys of ``PretrainDataset``): 800 random points in a 16 m cube,
    ``pairs`` of them paired with pixels of ``PAIRED_CAMERAS`` images (PAIRED_HEIGHT x PAIRED_WIDTH) at positions
    that follow the point's coordinates, and 8x8-pixel square superpixels. ``unmasked_corner`` gives the top-left
    10x20 pixels the "no mask" id 0 of imported masks."""
    from slidr.data.voxelize import point_features, voxelize

    height, width = PAIRED_HEIGHT, PAIRED_WIDTH
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.uniform(-8, 8, (800, 3)), rng.uniform(0, 255, (800, 1))], 1).astype(np.float32)
    coords, kept, inverse = voxelize(points, "cartesian", 0.5)
    pairing_points = rng.choice(len(points), pairs, replace=False)
    # pixels follow the point's position, so that a 3D network can learn which superpixel a point falls into
    camera = (points[pairing_points, 0] > 0).astype(np.int64)
    row = np.clip((points[pairing_points, 1] + 8) / 16 * height, 0, height - 1).astype(np.int64)
    col = np.clip((points[pairing_points, 2] + 8) / 16 * width, 0, width - 1).astype(np.int64)
    rows, cols = np.mgrid[:height, :width]
    superpixels = np.stack([(rows // 8) * 6 + cols // 8] * PAIRED_CAMERAS).astype(np.int64)
    if unmasked_corner:
        superpixels[:, :10, :20] = 0
    return {"points": points, "voxel_coords": coords, "voxel_feats": point_features(points[kept], "nuscenes"),
            "inverse_map": inverse,
            "images": rng.normal(size=(PAIRED_CAMERAS, 3, height, width)).astype(np.float32),
            "pairing_points": pairing_points.astype(np.int64),
            "pairing_images": np.stack([camera, row, col], 1).astype(np.int64), "superpixels": superpixels,
            "token": f"t{seed}"}
