"""The pretraining machinery (resume, DDP, skipped batches, bad losses, schedule) on a toy method.

The toy method is a real :class:`PretrainModule` with a tiny network and a regression loss, so these tests
check the trainer, not a particular loss. Its dataset draws noise from numpy's global generator, so a resumed
run that replays other augmentations than the uninterrupted one would end with other weights.
"""

from __future__ import annotations

import importlib
import math
import sys
import textwrap

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from slidr.config import PretrainConfig, load_config
from slidr.engine.checkpoint import CHECKPOINT_DIR, epoch_checkpoints, latest_checkpoint, load_export
from slidr.engine.data import EpochSampler, ShardSampler
from slidr.engine.distributed import gather_with_grad
from slidr.engine.module import PretrainModule
from slidr.engine.optim import CosineSchedule
from slidr.errors import SlidrError
from slidr.methods.pretrain import run_pretraining


class NoisyPoints(Dataset):
    """Items: 8 points with noise from numpy's global generator; every ``empty_every``-th item has none."""

    def __init__(self, size: int = 12, empty_items: tuple[int, ...] = ()) -> None:
        self.size = size
        self.empty_items = empty_items
        self.base = np.random.default_rng(0).normal(size=(size, 8, 3)).astype(np.float32)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if index in self.empty_items:
            return {"points": np.zeros((0, 3), np.float32)}
        return {"points": self.base[index] + np.random.normal(scale=0.1, size=(8, 3)).astype(np.float32)}


def collate_points(samples: list[dict]) -> dict:
    return {"points": torch.from_numpy(np.concatenate([s["points"] for s in samples])),
            "batch_size": len(samples)}


class ToyModule(PretrainModule):
    """A 2-layer MLP regressing a fixed function of the points; a batch without points has nothing to learn."""

    def __init__(self, cfg, dataset, nan_at_step: int = -1) -> None:
        super().__init__(cfg, dataset, collate_points)
        self.model_points = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        self.nan_at_step = nan_at_step

    def compute_loss(self, batch):
        points = batch["points"]
        if points.shape[0] == 0:
            return None, {}
        target = torch.stack([points.sum(1).sin(), points[:, 0] * points[:, 1]], 1)
        # dropout-like noise from torch's global generator: resumed runs must replay it too
        noise = torch.rand(points.shape[0], 1) * 0.01
        loss = ((self.model_points(points) - target) ** 2).mean() + noise.mean()
        if self.trainer.global_step == self.nan_at_step:
            loss = loss * float("nan")
        return loss, {"pairs": float(points.shape[0])}


def _config(**overrides) -> PretrainConfig:
    values = {"trainer.epochs": 3, "trainer.batch_size": 4, "trainer.accelerator": "cpu", "trainer.seed": 7,
              "trainer.keep_checkpoints": 1, "trainer.log_every_n_steps": 1, "optim.lr": 0.05, "method": "slidr"}
    values.update(overrides)
    return load_config(PretrainConfig, None, [f"{k}={v}" for k, v in values.items()])


def _train(tmp_path, name, cfg=None, dataset=None, resume=False, callbacks=(), nan_at_step=-1):
    cfg = cfg or _config()
    torch.manual_seed(cfg.trainer.seed)  # module initialisation, as run_pretraining seeds before building
    module = ToyModule(cfg, dataset or NoisyPoints(), nan_at_step=nan_at_step)
    return run_pretraining(cfg, tmp_path / name, resume=resume, callbacks=callbacks, enable_progress_bar=False,
                           module=module)


def _weights(path):
    return torch.load(path, weights_only=False)["model_points"]


class StopAfter(Exception):
    pass


class InterruptAtStep(L.Callback):
    """Raises mid-epoch at a given global step (a killed job)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise StopAfter(self.step)


def test_sampler_order_depends_on_seed_and_epoch_and_splits_ranks():
    sampler = EpochSampler(10, seed=3)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(10))
    assert list(sampler) == first  # same epoch: same order and seeds
    sampler.set_epoch(1)
    assert list(sampler) != first
    ranks = [list(EpochSampler(10, 3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 4 for r in ranks)  # padded to equal length
    assert {i for r in ranks for i, _ in r} == set(range(10))


def test_shard_sampler_gives_every_item_to_exactly_one_process():
    for items in (5, 6, 7):
        for world in (1, 2, 3):
            shards = [list(ShardSampler(items, rank, world)) for rank in range(world)]
            assert sorted(i for shard in shards for i in shard) == list(range(items))  # no padding, no gap
            assert all(shard == sorted(shard) and len(shard) == len(ShardSampler(items, rank, world))
                       for rank, shard in enumerate(shards))
    with pytest.raises(SlidrError, match="1 scan.*fewer than the 2 processes"):
        ShardSampler(1, 0, 2)


def test_cosine_schedule_per_epoch_and_per_step():
    per_epoch = CosineSchedule(total=4, steps_per_epoch=3)
    assert [per_epoch(s) for s in range(3)] == [1.0, 1.0, 1.0]  # constant within an epoch
    assert per_epoch(3) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert per_epoch(12) == pytest.approx(0.0, abs=1e-12)
    per_step = CosineSchedule(total=10, min_factor=0.1)
    assert per_step(5) == pytest.approx(0.1 + 0.9 * 0.5)


def test_kill_and_resume_reaches_the_same_weights(tmp_path):
    """Interrupted mid-epoch 2 (after the epoch-1 checkpoint), resumed: bit-identical to an uninterrupted run.

    Single-process CPU float32 runs the same kernels in the same order on the same data, so the weights must
    agree exactly (tolerance 0); any replay difference (data order, augmentation, model-side noise,
    scheduler position, optimizer momentum) shows up far above float rounding.
    """
    torch.set_num_threads(1)
    full = _train(tmp_path, "full")
    with pytest.raises(StopAfter):
        _train(tmp_path, "cut", callbacks=[InterruptAtStep(7)])  # 3 steps per epoch: in epoch 2
    assert [p.name for p in epoch_checkpoints(tmp_path / "cut" / CHECKPOINT_DIR)] == ["epoch=0000.ckpt",
                                                                                     "epoch=0001.ckpt"]
    with pytest.raises(SlidrError, match="--resume"):
        _train(tmp_path, "cut")
    resumed = _train(tmp_path, "cut", resume=True)
    a, b = _weights(tmp_path / "full" / "pretrained.pt"), _weights(tmp_path / "cut" / "pretrained.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["epoch_losses"] == full["epoch_losses"]
    assert resumed["epochs"] == full["epochs"] == 3
    # keep_checkpoints=1: the newest and one other
    assert [p.name for p in epoch_checkpoints(tmp_path / "cut" / CHECKPOINT_DIR)] == ["epoch=0001.ckpt",
                                                                                     "epoch=0002.ckpt"]


def test_summary_logs_and_curve(tmp_path):
    summary = _train(tmp_path, "run", cfg=_config(**{"trainer.epochs": 2}))
    out = tmp_path / "run"
    for key in ("method", "epochs", "initial_loss", "final_loss", "scans_per_s", "checkpoint"):
        assert summary[key] is not None, key
    assert summary["epochs"] == 2 and summary["steps"] == 6
    assert summary["final_loss"] < summary["initial_loss"]
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "config.yaml").is_file()
    metrics = (out / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    for column in ("loss", "lr", "scans_per_s", "pairs"):
        assert column in header
    assert list((out / "tensorboard").glob("version_0/events.out.tfevents.*"))
    # the learning rate follows the epoch-wise cosine: lr of epoch 1 = 0.05 * 0.5 * (1 + cos(pi/2))
    rows = [dict(zip(header, line.split(","))) for line in metrics[1:]]
    lrs = sorted({float(r["lr"]) for r in rows if r.get("lr")})
    assert lrs == pytest.approx([0.025, 0.05])


def test_batch_without_pairs_is_skipped_and_counted(tmp_path):
    # batch size 1: items 2 and 5 give empty batches every epoch
    cfg = _config(**{"trainer.epochs": 1, "trainer.batch_size": 1})
    summary = _train(tmp_path, "run", cfg=cfg, dataset=NoisyPoints(size=6, empty_items=(2, 5)))
    assert summary["skipped_batches"] == 2
    assert summary["scans_seen"] == 4
    assert math.isfinite(summary["final_loss"])


def test_nan_loss_stops_with_the_last_good_checkpoint_kept(tmp_path):
    with pytest.raises(SlidrError, match=r"not finite.*epoch=0001\.ckpt"):
        _train(tmp_path, "run", nan_at_step=7)
    kept = latest_checkpoint(tmp_path / "run" / CHECKPOINT_DIR)
    assert kept.name == "epoch=0001.ckpt"
    state = torch.load(kept, weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (tmp_path / "run" / "pretrained.pt").exists()


class SaveRankWeights(L.Callback):
    """Each process writes its final weights, and a check of ``gather_with_grad``, to ``rank<R>.pt``."""

    def __init__(self, out_dir) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        rank = trainer.global_rank
        local = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)  # 1 row on rank 0, 2 on rank 1
        gathered, offset = gather_with_grad(local)
        (gathered * torch.arange(1, gathered.shape[0] + 1).unsqueeze(1)).sum().backward()
        torch.save({"weights": pl_module.model_points.state_dict(), "gathered": gathered.detach(),
                    "offset": offset, "grad": local.grad}, self.out_dir / f"rank{rank}.pt")


@pytest.mark.slow  # two spawned processes
def test_two_process_cpu_ddp_ends_with_identical_weights(tmp_path):
    """Two gloo processes on different halves of the data: gradients are averaged, so weights stay equal."""
    cfg = _config(**{"trainer.epochs": 2, "trainer.devices": 2, "trainer.strategy": "ddp_spawn",
                     "trainer.num_threads": 1})
    out = tmp_path / "ddp"
    out.mkdir()
    summary = _train(tmp_path, "ddp", cfg=cfg, callbacks=[SaveRankWeights(out)])
    assert summary["world_size"] == 2
    assert summary["scans_seen"] == 2 * 12  # each process saw half of each epoch
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    initial = ToyModule(cfg, NoisyPoints()).model_points.state_dict()
    for key in r0["weights"]:
        assert torch.equal(r0["weights"][key], r1["weights"][key]), key
    assert any(not torch.equal(r0["weights"][key], initial[key]) for key in initial)

    # gather_with_grad: same concatenation everywhere, gradients only into the local rows
    expected = torch.tensor([[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]])
    assert torch.equal(r0["gathered"], expected) and torch.equal(r1["gathered"], expected)
    assert (r0["offset"], r1["offset"]) == (0, 1)
    assert torch.equal(r0["grad"], torch.ones(1, 2))
    assert torch.equal(r1["grad"], torch.tensor([[2.0, 2.0], [3.0, 3.0]]))


PLUGIN_METHOD = """
\"\"\"A pretraining method in one module: registered by name, trained by the normal runner.\"\"\"

import numpy as np
import torch
from torch.utils.data import Dataset

from slidr.engine.module import PretrainModule
from slidr.methods import METHODS


class Clouds(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return {"points": np.random.normal(size=(16, 3)).astype(np.float32)}


def collate(samples):
    return {"points": torch.from_numpy(np.concatenate([s["points"] for s in samples])), "batch_size": len(samples)}


@METHODS.register("centroid_regression")
class CentroidRegression(PretrainModule):
    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.model_points = torch.nn.Linear(3, 3)

    def build_train_dataset(self):
        return Clouds(), collate

    def compute_loss(self, batch):
        points = batch["points"]
        return ((self.model_points(points) - points.mean(0)) ** 2).mean(), {"pairs": float(len(points))}
"""


def test_a_new_method_is_one_module_trained_by_the_runner(tmp_path):
    """Registering a method is all it takes: the config accepts its name and run_pretraining builds and trains it."""
    from slidr.methods import METHODS

    (tmp_path / "centroid_method.py").write_text(textwrap.dedent(PLUGIN_METHOD))
    sys.path.insert(0, str(tmp_path))
    try:
        importlib.import_module("centroid_method")
        cfg = _config(**{"method": "centroid_regression", "trainer.max_steps": 2})
        summary = run_pretraining(cfg, tmp_path / "run", enable_progress_bar=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("centroid_method", None)
        METHODS.unregister("centroid_regression")
    assert summary["method"] == "centroid_regression" and summary["steps"] == 2 and summary["scans_seen"] == 8
    exported = load_export(tmp_path / "run" / "pretrained.pt")
    assert exported["method"] == "centroid_regression"
    torch.manual_seed(cfg.trainer.seed)
    initial = torch.nn.Linear(3, 3)  # what the runner built after seeding
    assert exported["model_points"].keys() == initial.state_dict().keys()
    assert not torch.equal(exported["model_points"]["weight"], initial.weight.detach())
    with pytest.raises(SlidrError, match="'centroid_regression' is not one of"):  # gone once unregistered
        _config(method="centroid_regression")


def test_a_planned_step_budget_becomes_the_trainers(tmp_path):
    """A method's ``planned_steps`` (PointContrast's ``pairs.equivalent_epochs``) sets the trainer's step budget and
    lifts the epoch limit (the budget is the epoch loop's: ``fit_loop.max_steps`` cannot be assigned)."""
    from slidr.engine.trainer import pretraining_trainer

    class Planned:
        cfg = _config()

        def planned_steps(self, world_size: int) -> int:
            return 3 * world_size

    trainer = pretraining_trainer(Planned(), tmp_path, enable_progress_bar=False)
    assert trainer.max_steps == 3 and trainer.fit_loop.max_steps == 3 and trainer.max_epochs == -1
