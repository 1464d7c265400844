"""Shared test fixtures: real sensor data (skipped when absent) and thread settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REALDATA = Path(os.environ.get("SLIDR_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))

# pytest-xdist runs one process per core: one torch thread each keeps them from fighting over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


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
