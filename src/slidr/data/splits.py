"""Dataset splits and label fractions.

nuScenes: the official ``train``/``val``/``test`` scenes (nuscenes-devkit ``create_splits_scenes``; for
``v1.0-mini`` its ``mini_train``/``mini_val``), and the SLidR paper's split of the 700 training scenes into 600
``parametrizing`` scenes (pretraining, hyper-parameter search) and 100 ``verifying`` scenes (the ablations'
mini-val; the list published with the authors' release ships as ``slidr/data/splits/nuscenes_minival_100.txt``).
For datasets without such lists (the synthetic world) :func:`stratified_minival` draws a mini-val with the same
proportions of rain, night and city as the scenes it draws from.

SemanticKITTI: train = sequences 00-07 and 09-10, val = 08, test = 11-21.

Label fractions (few-shot downstream training), as in the authors' release with ``dataset_skip_step = k``,
``k = round(1 / fraction)`` (1% -> 100, 5% -> 20, 10% -> 10, 25% -> 4, 100% -> 1):

- nuScenes keeps every k-th scene of the split, counting from 1 in scene-table order: scenes k, 2k, 3k, ...
  (0-based positions k-1, 2k-1, ...), with all their keyframes;
- SemanticKITTI keeps every k-th scan of the split in (sequence, frame) order, starting with the first.
"""

from __future__ import annotations

from importlib import resources
from typing import Mapping, Sequence

import numpy as np

from slidr.errors import DataError

LABEL_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)

SEMANTICKITTI_SPLITS: dict[str, list[str]] = {
    "train": ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"],
    "val": ["08"],
    "test": [f"{number:02d}" for number in range(11, 22)],
}

_NUSCENES_VERSION_SPLITS = {
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-test": {"test": "test"},
    "v1.0-mini": {"train": "mini_train", "val": "mini_val"},
}


def nuscenes_official_splits(version: str) -> dict[str, list[str]]:
    """The devkit's official scene lists of a nuScenes version, under the names ``train``/``val``/``test``.

    Parameters
    ----------
    version : ``v1.0-trainval``, ``v1.0-test`` or ``v1.0-mini``; any other version gets all of them.
    """
    from nuscenes.utils.splits import create_splits_scenes

    official = create_splits_scenes(verbose=False)
    names = _NUSCENES_VERSION_SPLITS.get(version, {"train": "train", "val": "val", "test": "test"})
    return {split: list(official[name]) for split, name in names.items()}


def minival_scenes() -> list[str]:
    """The SLidR paper's 100 "verifying" scenes (a subset of the official nuScenes train scenes)."""
    text = resources.files("slidr.data").joinpath("splits/nuscenes_minival_100.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def paper_splits(train_scenes: Sequence[str], verifying: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Split training scenes into the paper's ``parametrizing`` (train minus mini-val) and ``verifying`` sets.

    Parameters
    ----------
    train_scenes : the training scenes, in the order the splits should keep.
    verifying : the mini-val scenes; default :func:`minival_scenes`.

    Returns
    -------
    ``{"parametrizing": [...], "verifying": [...]}``, each in ``train_scenes`` order.
    """
    held_out = set(minival_scenes() if verifying is None else verifying)
    return {
        "parametrizing": [name for name in train_scenes if name not in held_out],
        "verifying": [name for name in train_scenes if name in held_out],
    }


def scene_conditions(description: str, location: str) -> tuple[bool, bool, str]:
    """(rain, night, city) of a scene from its description and log location.

    ``rain``/``night``: the word appears in the description (how nuScenes descriptions mark them);
    ``city``: the location's first dash-separated word (``singapore-onenorth`` -> ``singapore``).
    """
    text = description.lower()
    return "rain" in text, "night" in text, location.lower().split("-")[0]


def stratified_minival(scenes: Mapping[str, Mapping[str, str]], candidates: Sequence[str], size: int,
                       seed: int = 0) -> list[str]:
    """Draw ``size`` scenes of ``candidates`` with the proportions of rain, night and city of the candidates.

    The candidates are grouped by (rain, night, city); each group gets ``size * group / total`` scenes, rounded
    by largest remainder so that the sizes add up to ``size``; the scenes of a group are drawn with a seeded
    generator. The same inputs always give the same scenes.

    Parameters
    ----------
    scenes : scene name -> ``{"description": ..., "location": ...}`` (the index's ``scenes``).
    candidates : the scenes to draw from (e.g. the training scenes).
    size : how many scenes to draw (at most ``len(candidates)``).
    seed : seed of the draw.

    Returns
    -------
    The drawn scenes, in ``candidates`` order.
    """
    if not 0 <= size <= len(candidates):
        raise DataError(f"cannot draw a mini-val of {size} scenes from {len(candidates)} scenes")
    groups: dict[tuple, list[str]] = {}
    for name in candidates:
        info = scenes.get(name, {})
        key = scene_conditions(info.get("description", ""), info.get("location", ""))
        groups.setdefault(key, []).append(name)
    keys = sorted(groups)
    shares = np.array([size * len(groups[key]) / len(candidates) for key in keys])
    quotas = np.floor(shares).astype(int)
    by_remainder = sorted(range(len(keys)), key=lambda i: (-(shares[i] - quotas[i]), i))
    for i in by_remainder[: size - int(quotas.sum())]:
        quotas[i] += 1
    rng = np.random.default_rng(seed)
    drawn: set[str] = set()
    for key, quota in zip(keys, quotas):
        members = sorted(groups[key])
        drawn.update(members[i] for i in rng.permutation(len(members))[:quota])
    return [name for name in candidates if name in drawn]


def skip_step(label_fraction: float) -> int:
    """The ``k`` of "keep every k-th" for a label fraction: ``round(1 / label_fraction)``."""
    if not 0 < label_fraction <= 1:
        raise DataError(f"label fraction must be in (0, 1], got {label_fraction}")
    return max(1, int(round(1.0 / label_fraction)))


def every_kth_scene(scenes: Sequence[str], label_fraction: float) -> list[str]:
    """nuScenes label fraction: scenes k, 2k, 3k, ... (counting from 1) of ``scenes``; see the module docstring."""
    k = skip_step(label_fraction)
    kept = list(scenes[k - 1 :: k])
    if scenes and not kept:
        raise DataError(f"label fraction {label_fraction} keeps every {k}-th scene, but the split has only "
                        f"{len(scenes)} scenes: no scene is left")
    return kept


def every_kth_scan(scans: Sequence, label_fraction: float) -> list:
    """SemanticKITTI label fraction: scans 0, k, 2k, ... of ``scans``; see the module docstring."""
    return list(scans[:: skip_step(label_fraction)])
