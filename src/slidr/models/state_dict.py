"""Comparing a state dict read from a file with a model's, for error messages that name the keys."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch

MAX_LISTED = 8


def state_dict_problems(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                        exempt: Callable[[str], bool] = lambda key: False) -> list[str]:
    """What keeps ``state`` from loading into a model whose state dict is ``target``, one phrase per kind.

    Parameters
    ----------
    state : the state dict read from a file.
    target : the model's own state dict.
    exempt : keys of ``target`` for which absence or another shape is acceptable (e.g. a replaced classifier).

    Returns
    -------
    list of str
        Empty when ``state`` fits; else phrases such as ``"2 missing keys: a, b"``.
    """
    missing = [key for key in target if key not in state and not exempt(key)]
    unexpected = [key for key in state if key not in target]
    shapes = [f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}" for key, value in target.items()
              if key in state and not exempt(key) and state[key].shape != value.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (file != model): {listing(shapes)}")
    return problems


def listing(items: Iterable[str], limit: int = MAX_LISTED) -> str:
    """The first ``limit`` items, comma-separated, with how many more there are."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
