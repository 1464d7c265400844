"""Progress bars for long work (tqdm on stderr; silent when not a terminal unless forced)."""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool | None = False) -> tqdm:
    """A tqdm bar with the project's defaults (rate and ETA shown, smoothing for noisy steps)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1, disable=disable)
