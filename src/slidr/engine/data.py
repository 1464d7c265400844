"""Data order, seeds and loaders of the engine: replayable training loaders and sharded evaluation loaders.

Training. The data order comes from :class:`EpochSampler` (a permutation drawn from ``(seed, epoch)``, split
across processes) and each sample's augmentations from a seed drawn with it (:class:`SeededDataset`), so a
resumed run replays the interrupted one exactly.

Evaluation. :class:`ShardSampler` gives each process every ``world_size``-th item, in order and without padding:
every item is evaluated exactly once whatever the number of processes, so metrics summed over processes equal
the one-process ones.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from slidr.config import TrainerConfig
from slidr.errors import SlidrError


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0]) >> 1


class EpochSampler(Sampler):
    """Shuffled order drawn from ``(seed, epoch)``, split across processes; yields ``(index, sample_seed)``.

    Each process takes every ``world_size``-th item of the permutation (padded by wrapping so that all
    processes run the same number of steps). ``set_epoch`` is called by Lightning before every epoch.

    Parameters
    ----------
    num_items : int
        Dataset length.
    seed : int
        Run seed.
    rank, world_size : int
        This process and the number of processes.
    shuffle : bool
        False: items in order (seeds still differ per epoch).
    """

    def __init__(self, num_items: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if num_items <= 0:
            raise SlidrError("the training set is empty: no sample to train on")
        self.num_items = num_items
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_items / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_items, generator=generator) if self.shuffle else torch.arange(self.num_items)
        seeds = torch.randint(0, 2**62, (self.num_items,), generator=generator)
        total = len(self) * self.world_size
        positions = torch.arange(total) % self.num_items
        for position in positions[self.rank::self.world_size].tolist():
            yield int(order[position]), int(seeds[position])


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, numpy's and torch's global generators for the block, then restore their states."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


class SeededDataset(Dataset):
    """Wrap a map-style dataset so that item ``(index, seed)`` is drawn with all generators seeded by ``seed``.

    The augmentations of a sample then depend only on (run seed, epoch, position), whichever worker loads it
    and whether or not the run was resumed.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with seeded_rngs(seed):
            return self.dataset[index]


def replayable_loader(dataset: Dataset, collate: Callable[[list], dict], trainer_cfg: TrainerConfig,
                      trainer: Any, workers: int) -> DataLoader:
    """Training loader whose order and augmentations are functions of (seed, epoch, rank): resumes replay it.

    ``trainer`` is the Lightning trainer (its ``global_rank`` and ``world_size`` split the data). With
    ``trainer_cfg.drop_last`` the last incomplete batch of each epoch is left out, as the authors' loaders do.

    Raises
    ------
    SlidrError
        ``drop_last`` and fewer items per process than one batch (nothing would be trained).
    """
    sampler = EpochSampler(len(dataset), trainer_cfg.seed, trainer.global_rank, trainer.world_size)  # type: ignore
    if trainer_cfg.drop_last and len(sampler) < trainer_cfg.batch_size:
        raise SlidrError(f"the training set has {len(sampler)} scan(s) per process, fewer than one batch "
                         f"(trainer.batch_size={trainer_cfg.batch_size}) with trainer.drop_last=true: nothing would "
                         "be trained; lower trainer.batch_size or set trainer.drop_last=false")
    return DataLoader(SeededDataset(dataset), batch_size=trainer_cfg.batch_size, sampler=sampler,
                      collate_fn=collate, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available(), drop_last=trainer_cfg.drop_last)


class ShardSampler(Sampler):
    """Items ``rank, rank + world_size, ...`` in order, without padding: each item on exactly one process.

    Parameters
    ----------
    num_items : int
        Dataset length; at least ``world_size`` (a process without items could not join the metric's
        synchronisation at the end of the evaluation).
    rank, world_size : int
        This process and the number of processes.
    """

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1) -> None:
        if num_items < world_size:
            raise SlidrError(f"the evaluation set has {num_items} scan(s), fewer than the {world_size} processes: "
                             "evaluate with fewer devices")
        self.num_items = num_items
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.num_items, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_items, self.world_size))


def evaluation_loader(dataset: Dataset, collate: Callable[[list], dict], batch_size: int, trainer: Any,
                      workers: int = 0) -> DataLoader:
    """Batches of this process's shard of ``dataset`` (:class:`ShardSampler`), in order; one process: all of it."""
    sampler = ShardSampler(len(dataset), trainer.global_rank, trainer.world_size)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=workers)


def ordered_loader(dataset: Dataset, collate: Callable[[list], dict], batch_size: int, workers: int = 0
                   ) -> DataLoader:
    """Batches of the whole of ``dataset`` in order, in this process (feature caches)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=workers)
