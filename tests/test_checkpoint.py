"""Exported pretrained files and load_backbone: prefixes, strict key/shape checks, voxel settings, atomic writes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slidr.config import PretrainConfig, VoxelConfig
from slidr.engine.checkpoint import export_pretrained, latest_checkpoint, load_backbone, load_export, save_atomic
from slidr.errors import SlidrError


def _net(out: int = 4) -> nn.Module:
    torch.manual_seed(out)
    net = nn.Sequential()
    net.add_module("body", nn.Linear(3, 5))
    net.add_module("final", nn.Linear(5, out))
    return net


def _same(a: nn.Module, b: nn.Module, skip: str = "") -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items() if not k.startswith(skip))


def test_exported_file_round_trip_and_voxel_check(tmp_path):
    source, head = _net(), nn.Conv2d(8, 4, 1)
    path = export_pretrained(tmp_path / "pretrained.pt", source, head, PretrainConfig(), "slidr")
    payload = torch.load(path, weights_only=False)
    assert set(payload) == {"model_points", "model_images_head", "config", "method", "slidr_version"}
    assert payload["model_images_head"].keys() == head.state_dict().keys()
    target = _net(out=4)
    target.final = nn.Linear(5, 4)
    report = load_backbone(path, target, VoxelConfig())
    assert _same(source, target) and report["method"] == "slidr" and report["skipped"] == []
    with pytest.raises(SlidrError, match=r"data\.voxel.*size: pretrained 0\.1 vs now 0\.05"):
        load_backbone(path, _net(), VoxelConfig(size=0.05))


@pytest.mark.parametrize("prefix", ["", "module.", "model_points.", "module.model_points.", "model_points.module."])
def test_plain_state_dicts_with_prefixes(tmp_path, prefix):
    source = _net()
    state = {prefix + key: value for key, value in source.state_dict().items()}
    if "model_points" in prefix:  # the release also saves the image network beside it
        state["model_images.head.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "state.pt")
    target = _net(out=4)
    target.final.reset_parameters()
    load_backbone(tmp_path / "state.pt", target)
    assert _same(source, target)


def test_downstream_head_of_another_shape_is_left_as_initialised(tmp_path):
    torch.save(_net(out=4).state_dict(), tmp_path / "state.pt")
    target = _net(out=17)  # a 17-class classifier replaces the 4-d projection
    before = target.final.weight.clone()
    report = load_backbone(tmp_path / "state.pt", target)
    assert report["skipped"] == ["final.weight", "final.bias"]
    assert torch.equal(target.final.weight, before)
    assert torch.equal(target.body.weight, _net(out=4).body.weight)


def test_mismatching_keys_are_named(tmp_path):
    state = _net().state_dict()
    state["extra.weight"] = torch.zeros(1)
    state["body.weight"] = torch.zeros(6, 3)
    del state["body.bias"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(SlidrError) as error:
        load_backbone(tmp_path / "bad.pt", _net())
    message = str(error.value)
    assert "missing keys: body.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "body.weight (6, 3) != (5, 3)" in message
    with pytest.raises(SlidrError, match="does not exist"):
        load_backbone(tmp_path / "absent.pt", _net())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SlidrError, match="cannot read"):
        load_backbone(tmp_path / "junk.pt", _net())


def test_atomic_save_leaves_no_partial_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    save_atomic({"a": 1}, tmp_path / "epoch=0000.ckpt")
    with pytest.raises(RuntimeError):
        save_atomic({"b": Unpicklable()}, tmp_path / "epoch=0001.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0000.ckpt"]
    assert latest_checkpoint(tmp_path).name == "epoch=0000.ckpt"
    assert torch.load(tmp_path / "epoch=0000.ckpt") == {"a": 1}


class _RunsCodeWhenUnpickled:
    """Unpickling this object creates ``marker``: what a malicious checkpoint could do instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


def test_load_export_reads_tensors_and_plain_data_only(tmp_path):
    path = export_pretrained(tmp_path / "pretrained.pt", _net(), nn.Conv2d(8, 4, 1), PretrainConfig(), "slidr")
    payload = load_export(path)
    assert payload["method"] == "slidr" and payload["config"]["optim"]["lr"] == 0.5
    assert torch.equal(payload["model_points"]["final.weight"], _net().final.weight)

    marker = tmp_path / "code_ran"
    torch.save({"model_points": _net().state_dict(), "extra": _RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.pt")
    with pytest.raises(SlidrError, match=r"evil\.pt holds Python objects besides tensors and plain data \(a pickled "):
        load_export(tmp_path / "evil.pt")
    with pytest.raises(SlidrError, match="holds Python objects"):
        load_backbone(tmp_path / "evil.pt", _net())  # the downstream / analysis entry point refuses it too
    assert not marker.exists()  # nothing ran
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(SlidrError, match="does not hold a dict"):
        load_export(tmp_path / "list.pt")
