"""Splits: official and paper lists, the stratified mini-val builder, label fractions."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from slidr.data.splits import (
    LABEL_FRACTIONS,
    SEMANTICKITTI_SPLITS,
    every_kth_scan,
    every_kth_scene,
    minival_scenes,
    nuscenes_official_splits,
    paper_splits,
    scene_conditions,
    skip_step,
    stratified_minival,
)
from slidr.errors import DataError


def test_official_and_paper_splits():
    trainval = nuscenes_official_splits("v1.0-trainval")
    assert {k: len(v) for k, v in trainval.items()} == {"train": 700, "val": 150}
    assert {k: len(v) for k, v in nuscenes_official_splits("v1.0-mini").items()} == {"train": 8, "val": 2}
    assert list(nuscenes_official_splits("v1.0-test")) == ["test"]
    verifying = minival_scenes()
    assert len(verifying) == len(set(verifying)) == 100 and set(verifying) <= set(trainval["train"])
    paper = paper_splits(trainval["train"])
    assert len(paper["parametrizing"]) == 600 and sorted(paper["verifying"]) == sorted(verifying)
    assert not set(paper["parametrizing"]) & set(paper["verifying"])
    assert SEMANTICKITTI_SPLITS["val"] == ["08"] and "08" not in SEMANTICKITTI_SPLITS["train"]
    assert len(SEMANTICKITTI_SPLITS["train"]) == 10


def _synthetic_scenes(n=700, seed=0):
    """Scenes with the paper's proportions: 20% rain, 12% night, 44% Singapore."""
    rng = np.random.default_rng(seed)
    scenes = {}
    for i in range(n):
        words = ["drive"]
        if i % 5 == 0:
            words.append("Rain")
        if i % 25 in (1, 2, 3):
            words.append("night")
        location = "singapore-onenorth" if rng.random() < 0.44 else "boston-seaport"
        scenes[f"scene-{i:04d}"] = {"description": ", ".join(words), "location": location}
    return scenes


def _conditions(scenes, names):
    counts = collections.Counter()
    for name in names:
        rain, night, city = scene_conditions(scenes[name]["description"], scenes[name]["location"])
        counts["rain"] += rain
        counts["night"] += night
        counts[city] += 1
    return counts


def test_stratified_minival_proportions_and_determinism():
    scenes = _synthetic_scenes()
    names = list(scenes)
    drawn = stratified_minival(scenes, names, 100, seed=0)
    assert len(drawn) == len(set(drawn)) == 100 and set(drawn) <= set(names)
    assert drawn == [name for name in names if name in set(drawn)]  # candidate order
    population, sample = _conditions(scenes, names), _conditions(scenes, drawn)
    for key in ("rain", "night", "singapore", "boston"):
        assert abs(sample[key] - population[key] * 100 / 700) <= 1.5, key
    assert stratified_minival(scenes, names, 100, seed=0) == drawn
    assert stratified_minival(scenes, names, 100, seed=1) != drawn
    with pytest.raises(DataError, match="cannot draw"):
        stratified_minival(scenes, names[:5], 6)


def test_label_fractions_every_kth():
    assert [skip_step(f) for f in LABEL_FRACTIONS] == [100, 20, 10, 4, 1]
    scenes = [f"s{i}" for i in range(850)]
    assert every_kth_scene(scenes, 1.0) == scenes
    kept = every_kth_scene(scenes, 0.01)  # the authors' counter: scenes 100, 200, ... (1-based)
    assert kept == [f"s{i}" for i in range(99, 850, 100)]
    assert every_kth_scene(scenes, 0.25)[:2] == ["s3", "s7"] and len(every_kth_scene(scenes, 0.25)) == 212
    assert every_kth_scan(list(range(19130)), 0.1)[:3] == [0, 10, 20] and len(every_kth_scan(range(19130), 0.1)) == 1913
    with pytest.raises(DataError, match="no scene is left"):
        every_kth_scene(scenes[:10], 0.05)
    with pytest.raises(DataError, match="label fraction"):
        skip_step(0.0)
