"""``slidr bench sparse``: exact multiply-add counts of a whole network, the % of peak table, device checks."""

from __future__ import annotations

import pytest
import torch

from slidr.bench import resolve_device
from slidr.bench.sparse import LAYER_KINDS, peak_table, record_layers
from slidr.config import BackboneConfig
from slidr.errors import SlidrError
from slidr.models.sparse import SparseTensor
from slidr.models.unet import build_backbone
from test_sparse import brute_force_multiply_adds, one_thread, random_sites  # noqa: F401 - autouse fixture


def small_network():
    torch.manual_seed(0)
    coords = random_sites(30, batch=1, grid=12, occupancy=0.25)
    model = build_backbone(BackboneConfig(name="minkunet14_half", in_channels=1, out_channels=8))
    return model, coords, torch.rand(len(coords), 1)


def test_network_multiply_adds_equal_brute_force_per_layer():
    model, coords, feats = small_network()
    records = record_layers(model, SparseTensor(coords, feats))
    assert {r.kind for r in records} == set(LAYER_KINDS)
    # minkunet14: stem + 4 downs + 8 blocks x 2 convs + 4 ups + point-wise residuals where widths change + head
    assert sum(r.kind == "strided" for r in records) == 4 and sum(r.kind == "transposed" for r in records) == 4
    cache = SparseTensor(coords, feats).cache
    for record in records:
        if record.kind == "linear head":
            assert record.multiply_adds == len(coords) * record.in_channels * record.out_channels
            continue
        x = record.inputs
        # the sites the layer sees: its input level (the finer level for the transposed convolution)
        stride = x.stride // 2 if record.kind == "transposed" else x.stride
        assert record.multiply_adds == brute_force_multiply_adds(cache.level(stride).coords, record.module)


def test_peak_table_rows_are_consistent():
    model, coords, feats = small_network()
    rows = peak_table(model, coords, feats, step_seconds=1.0, threads=1, repeats=1, device=torch.device("cpu"))
    by_name = {row["layers"]: row for row in rows}
    assert [row["layers"] for row in rows] == list(LAYER_KINDS) + ["all layers (replayed)", "whole step"]
    kinds = [by_name[k] for k in LAYER_KINDS]
    assert by_name["whole step"]["gmac_fwd_bwd"] == pytest.approx(sum(r["gmac_fwd_bwd"] for r in kinds))
    assert by_name["all layers (replayed)"]["seconds"] == pytest.approx(sum(r["seconds"] for r in kinds))
    whole = by_name["whole step"]
    assert whole["seconds"] == 1.0 and whole["gflop_s"] == pytest.approx(2 * whole["gmac_fwd_bwd"])
    for row in rows:
        assert row["ceiling_gflop_s"] > 0 and row["pct_of_peak"] == pytest.approx(
            100 * row["gflop_s"] / row["ceiling_gflop_s"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_request_without_cuda_is_one_clear_error():
    with pytest.raises(SlidrError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(SlidrError, match="--device"):
        resolve_device("banana")
