"""The successor methods as trained modules: ScaLR (``scalr``), ST-SLidR (``stslidr``) and SLidR on imported masks.

End to end on the tiny synthetic world (``slidr pretrain`` -> export -> ``load_backbone``), each module against
a direct call of its pure loss (tests/test_losses_successors.py holds those against brute-force references),
ScaLR's one camera per scan in the dataset, the teacher features at paired pixels, the warmup schedule, and
ST-SLidR's negatives gathered over two gloo processes against one process holding the whole batch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import PAIRED_HEIGHT, PAIRED_WIDTH, paired_sample, tiny_pretrain_config
from slidr.config import ConfigError, DataConfig, PretrainConfig, load_config, with_changes
from slidr.data.datasets import CameraSubsetDataset, PretrainDataset, collate_pretrain
from slidr.engine.optim import CosineSchedule
from slidr.methods import losses
from slidr.methods.pretrain import build_module, run_pretraining
from slidr.models import sparse_input
from slidr.models.image import upsample, upsampled_at_pixels

# ----------------------------------------------------------------------------------------------------------------
# Modules on a fixed hand-made batch
# ----------------------------------------------------------------------------------------------------------------




def _batch() -> dict:
    return collate_pretrain([paired_sample(0, unmasked_corner=True), paired_sample(1, unmasked_corner=True)])


def _module(method, *overrides):
    torch.manual_seed(0)
    return build_module(tiny_pretrain_config(method, *overrides)).train()


@pytest.mark.parametrize("overrides", [(), ("scalr.head=mlp", "scalr.head_hidden=32", "scalr.distance=cosine")])
def test_scalr_module_computes_the_pure_loss(overrides):
    module = _module("scalr", *overrides)
    batch = _batch()
    loss, stats = module.compute_loss(batch)
    loss.backward()

    with torch.no_grad():
        features = module.model_points.forward_features(sparse_input(batch))
        points = module.head(features[batch["inverse_map"][batch["pairing_points"]]])
        teacher = module.model_images.encoder.forward_features(batch["images"])  # ImageNet weights: no renorm
        pixels = losses.features_at_pixels(upsample(teacher, (PAIRED_HEIGHT, PAIRED_WIDTH)), batch["pairing_images"])
        expected, _ = losses.cosine_distillation(points, pixels, module.cfg.scalr.distance)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert stats["pairs"] == 600 and 0 < float(loss.detach()) < 2
    assert module.model_images.head is None and module.images_head() is None
    assert module.head.layers[-1].out_features == module.model_images.encoder.out_channels == 128
    # gradients reach the 3D network (but not its unused last layer) and the projection head, not the teacher
    assert all(p.grad is None for p in module.model_images.parameters())
    assert all(p.grad is None and not p.requires_grad for p in module.model_points.final.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.head.parameters())
    reached = [n for n, p in module.model_points.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(reached) > 10
    trainable = {id(p) for p in module.trainable_parameters()}
    assert not any(id(p) in trainable for p in [*module.model_images.parameters(),
                                                *module.model_points.final.parameters()])


@pytest.mark.parametrize("overrides", [(), ("loss.class_balance=false", "loss.min_quantile=0", "loss.max_quantile=0.9",
                                            "loss.renormalize_means=true")])
def test_stslidr_module_computes_the_pure_loss_with_one_encoder_pass(overrides):
    module = _module("stslidr", *overrides)
    batch = _batch()
    encoder, calls = module.model_images.encoder, []
    encode = encoder.forward_features
    encoder.forward_features = lambda images: calls.append(1) or encode(images)
    loss, stats = module.compute_loss(batch)
    del encoder.forward_features
    assert len(calls) == 1

    cfg = module.cfg.loss
    with torch.no_grad():
        points = module.model_points(sparse_input(batch))[batch["inverse_map"][batch["pairing_points"]]]
        expected, expected_stats = losses.semantically_tolerant_infonce(
            points, batch["pairing_images"], module.model_images(batch["images"]), batch["superpixels"],
            module.model_images.encoder.forward_features(batch["images"]), cfg.temperature, cfg.min_quantile,
            cfg.max_quantile, cfg.class_balance, cfg.balance_threshold, cfg.renormalize_means)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert stats["superpixels"] == expected_stats["superpixels"] > 20
    loss.backward()
    assert module.model_images.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.model_images.encoder.parameters())


@pytest.mark.parametrize("method", ["slidr", "stslidr"])
def test_pairs_on_unlabelled_mask_pixels_are_left_out_with_imported_masks(method):
    batch = _batch()
    image, row, col = batch["pairing_images"].unbind(1)
    on_unlabelled = batch["superpixels"][image, row, col] == 0
    assert 0 < int(on_unlabelled.sum()) < len(on_unlabelled)

    masks = _module(method, "data.superpixels.method=masks", "data.superpixels.source=sam")
    slic = _module(method)
    masks.load_state_dict(slic.state_dict())
    loss, stats = masks.compute_loss(batch)
    kept = {**batch, "pairing_points": batch["pairing_points"][~on_unlabelled],
            "pairing_images": batch["pairing_images"][~on_unlabelled]}
    expected, expected_stats = slic.compute_loss(kept)
    torch.testing.assert_close(loss, expected)
    assert stats["pairs"] == expected_stats["pairs"] == int((~on_unlabelled).sum())
    unfiltered, _ = slic.compute_loss(batch)  # SLIC ids: 0 is a superpixel like any other
    assert not torch.allclose(unfiltered, expected)

    everything_unlabelled = {**batch, "superpixels": torch.zeros_like(batch["superpixels"])}
    assert masks.compute_loss(everything_unlabelled)[0] is None  # nothing to learn: the batch is skipped


@pytest.mark.parametrize("method", ["scalr", "stslidr"])
def test_loss_decreases_on_a_fixed_batch(method):
    torch.set_num_threads(1)
    module = _module(method)
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-2)
    batch = _batch()
    values = []
    for _ in range(8):
        optimizer.zero_grad()
        loss, _ = module.compute_loss(batch)
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    assert values[-1] < values[0] - 0.1, values


def test_methods_refuse_settings_they_cannot_use():
    with pytest.raises(ConfigError, match="stslidr .*superpixels"):
        _module("stslidr", "data.superpixels.method=none")
    with pytest.raises(ConfigError, match="stslidr .*use_superpixels"):
        _module("stslidr", "loss.use_superpixels=false")
    with pytest.raises(ConfigError, match="frozen teacher"):
        _module("scalr", "image.freeze_encoder=false")
    with pytest.raises(ConfigError, match="head_hidden"):
        tiny_pretrain_config("scalr", "scalr.head_hidden=16")
    with pytest.raises(ConfigError, match="scalr.max_points must be > 0"):
        tiny_pretrain_config("scalr", "scalr.max_points=0")
    with pytest.raises(ConfigError, match="min_quantile .* must not exceed"):
        tiny_pretrain_config("stslidr", "loss.min_quantile=0.5", "loss.max_quantile=0.4")
    with pytest.raises(ConfigError, match="warmup_steps must be >= 0"):
        tiny_pretrain_config("scalr", "optim.warmup_steps=-1")


# ----------------------------------------------------------------------------------------------------------------
# Teacher features at paired pixels; the warmup schedule
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("map_hw, image_hw", [((7, 11), (32, 48)), ((16, 32), (224, 448)), ((1, 5), (9, 20)),
                                              ((5, 5), (5, 5))])
def test_teacher_features_at_pixels_equal_upsampling_then_reading(map_hw, image_hw):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 6, *map_hw, generator=generator)
    pairs = torch.stack([torch.randint(3, (500,), generator=generator),
                         torch.randint(image_hw[0], (500,), generator=generator),
                         torch.randint(image_hw[1], (500,), generator=generator)], 1)
    corners = torch.tensor([[0, 0, 0], [1, image_hw[0] - 1, image_hw[1] - 1], [2, 0, image_hw[1] - 1]])
    pairs = torch.cat([pairs, corners])
    expected = losses.features_at_pixels(upsample(features, image_hw), pairs)
    torch.testing.assert_close(upsampled_at_pixels(features, image_hw, pairs), expected, rtol=1e-5, atol=1e-5)


def warmup_cosine_reference(step, warmup, total, factor_min):
    """ScaLR's ``utils/scheduler.py`` ``WarmupCosine``, transcribed."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / (total - warmup) * math.pi
    return factor_min + 0.5 * (1 - factor_min) * (math.cos(progress) + 1)


def test_warmup_then_cosine_is_scalrs_schedule():
    schedule = CosineSchedule(total=100, min_factor=0.005, warmup=12)
    for step in range(101):
        assert schedule(step) == pytest.approx(warmup_cosine_reference(step, 12, 100, 0.005), abs=1e-12), step
    assert schedule(0) == 0.0 and schedule(12) == 1.0 and schedule(150) == pytest.approx(0.005)
    constant = CosineSchedule(total=100, constant=True, warmup=10)
    assert [constant(s) for s in (0, 5, 10, 99)] == [0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="per-step"):
        CosineSchedule(total=10, steps_per_epoch=3, warmup=2)


# ----------------------------------------------------------------------------------------------------------------
# On the tiny synthetic world: one camera per scan, and `slidr pretrain` end to end
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tiny_nuscenes_world, tmp_path_factory):
    """Index and SLIC superpixels of the tiny world."""
    from slidr.cli.main import main
    from slidr.data.prepare_nuscenes import prepare_nuscenes

    folder = tmp_path_factory.mktemp("successors")
    prepare_nuscenes(tiny_nuscenes_world, "v1.0-trainval", folder / "index.npz")
    assert main(["superpixels", "--index", str(folder / "index.npz"), "--n-segments", "30", "--no-progress"]) == 0
    return folder / "index.npz"


def _data(index, **changes) -> DataConfig:
    cfg = DataConfig(index=str(index), image_size=[64, 112])
    cfg = with_changes(cfg, {"superpixels.n_segments": 30, "augment.min_pairs": 100})
    return with_changes(cfg, changes)


def test_one_random_camera_per_scan_and_only_the_points_it_sees(world):
    data = _data(world, **{"superpixels.method": "none", "augment.enabled": False})
    whole = PretrainDataset(world, None, data, train=False)
    one_camera = CameraSubsetDataset(world, None, data, train=False, one_camera=True, paired_points_only=False)
    frustum = CameraSubsetDataset(world, None, data, train=False, one_camera=True, paired_points_only=True)
    capped = CameraSubsetDataset(world, None, data, train=False, one_camera=True, paired_points_only=True,
                                 max_points=300)
    chosen = []
    for draw in range(24):
        torch.manual_seed(draw)  # the per-sample seed the trainer sets
        item = draw % len(whole)
        sample = one_camera[item]
        (channel,) = sample["channels"]
        chosen.append(channel)
        # exactly the sample of that camera alone: its image only, every point of the scan
        alone = PretrainDataset(world, None, with_changes(data, {"cameras": [channel]}), train=False)[item]
        assert sample["images"].shape == (1, 3, 64, 112)
        for key in ("points", "images", "pairing_points", "pairing_images", "voxel_coords", "inverse_map"):
            assert np.array_equal(sample[key], alone[key]), key
        assert len(sample["points"]) == len(whole[item]["points"])

        seen = frustum[item]  # same seed: same camera
        assert seen["channels"] == [channel]
        paired = np.unique(alone["pairing_points"])
        assert np.array_equal(seen["points"], alone["points"][paired])
        assert np.array_equal(seen["labels"], alone["labels"][paired])
        assert np.array_equal(np.sort(seen["pairing_points"]), np.arange(len(paired)))  # one camera: a pair a point
        assert np.array_equal(seen["pairing_images"], alone["pairing_images"][np.argsort(alone["pairing_points"],
                                                                                          kind="stable")])
        assert len(seen["inverse_map"]) == len(seen["points"]) and seen["inverse_map"].max() < len(seen["voxel_coords"])

        few = capped[item]
        assert few["channels"] == [channel] and len(few["points"]) == min(300, len(paired))
        assert set(map(tuple, few["points"].tolist())) <= set(map(tuple, seen["points"].tolist()))
        assert len(few["pairing_points"]) == len(few["points"])
    assert set(chosen) == set(data.cameras)

    # a batch never mixes cameras within a scan: pairs of scan b all refer to image b, the scan's one camera
    torch.manual_seed(3)
    batch = collate_pretrain([frustum[0], frustum[1], frustum[2]])
    assert batch["images"].shape[0] == 3
    scan_of_pair = batch["point_batch"][batch["pairing_points"]]
    assert torch.equal(batch["pairing_images"][:, 0], scan_of_pair)


@pytest.mark.parametrize("method, overrides", [
    ("scalr", ["scalr.max_points=4000"]),
    ("stslidr", ["data.superpixels.n_segments=30"]),
])
def test_pretrain_end_to_end_on_the_tiny_world(world, tmp_path, method, overrides):
    from slidr.engine.checkpoint import load_backbone
    from slidr.models.unet import build_backbone

    cfg = load_config(PretrainConfig, f"pretrain/{method}_demo_cpu.yaml", [
        f"data.index={world}", "data.image_size=[64,112]", "data.augment.min_pairs=100", "trainer.max_steps=2",
        "trainer.batch_size=2", "trainer.num_threads=1", "trainer.log_every_n_steps=1", *overrides])
    summary = run_pretraining(cfg, tmp_path / method, enable_progress_bar=False)
    assert summary["method"] == method and summary["steps"] == 2 and summary["skipped_batches"] == 0
    assert math.isfinite(summary["final_loss"]) and math.isfinite(summary["initial_loss"])

    model = build_backbone(with_changes(cfg.backbone, {"out_channels": 16, "normalize_output": False}))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    report = load_backbone(tmp_path / method / "pretrained.pt", model, cfg.data.voxel)
    assert report["method"] == method and report["skipped"] == ["final.weight", "final.bias"]
    assert len(report["loaded"]) == len(before) - 2
    changed = [key for key in report["loaded"] if not torch.equal(before[key], model.state_dict()[key])]
    assert len(changed) > 10


# ----------------------------------------------------------------------------------------------------------------
# ST-SLidR's negatives gathered over two processes
# ----------------------------------------------------------------------------------------------------------------


def _stslidr_inputs(seed: int, images: int):
    generator = torch.Generator().manual_seed(seed)
    height, width = 12, 16
    pixels = torch.nn.functional.normalize(torch.randn(images, 5, height, width, generator=generator), dim=1)
    teacher = torch.randn(images, 7, 6, 8, generator=generator)
    teacher[0, :, :3] = teacher[0, :, :1]  # similar superpixels, so weights and votes matter
    superpixels = (torch.arange(height).view(-1, 1) // 4 * 4 + torch.arange(width) // 4).expand(images, -1, -1)
    superpixels = superpixels.clone()
    pairs = 60
    pairing = torch.stack([torch.randint(images, (pairs,), generator=generator),
                           torch.randint(height, (pairs,), generator=generator),
                           torch.randint(width, (pairs,), generator=generator)], 1)
    points = torch.nn.functional.normalize(torch.randn(pairs, 5, generator=generator, dtype=torch.float64), dim=1)
    return points.float(), pairing, pixels, superpixels, teacher


SETTINGS = dict(temperature=0.07, min_quantile=0.01, max_quantile=1.0, class_balance=True, balance_threshold=0.5)


def _gathered_worker(rank: int, world_size: int, init_file: str, out: str) -> None:
    from slidr.methods.stslidr import gathered_tolerant_info_nce

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        points, pairing, pixels, superpixels, teacher = _stslidr_inputs(rank, images=2 + rank)
        points.requires_grad_()
        embeddings = losses.tolerant_superpixel_embeddings(points, pairing, pixels, superpixels, teacher)
        loss, stats = gathered_tolerant_info_nce(embeddings, **SETTINGS)
        (loss / world_size).backward()  # what DDP's gradient averaging does
        torch.save({"loss": loss.detach(), "grad": points.grad, "stats": stats}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch and Lightning
def test_gathered_negatives_over_two_processes_equal_one_process_with_the_whole_batch(tmp_path):
    mp.spawn(_gathered_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]

    parts = [_stslidr_inputs(rank, images=2 + rank) for rank in range(2)]
    points = torch.cat([part[0] for part in parts]).requires_grad_()
    pairing = torch.cat([parts[0][1], parts[1][1] + torch.tensor([2, 0, 0])])
    pixels, superpixels, teacher = (torch.cat([part[k] for part in parts]) for k in (2, 3, 4))
    expected, stats = losses.semantically_tolerant_infonce(points, pairing, pixels, superpixels, teacher, **SETTINGS)
    expected.backward()

    assert results[0]["stats"]["global_superpixels"] == stats["superpixels"] == sum(
        r["stats"]["superpixels"] for r in results)
    torch.testing.assert_close((results[0]["loss"] + results[1]["loss"]) / 2, expected.detach(), rtol=1e-5,
                               atol=1e-6)
    # a point feature only moves its anchor: its gradient is the one-process gradient exactly
    torch.testing.assert_close(torch.cat([r["grad"] for r in results]), points.grad, rtol=1e-4, atol=1e-7)
