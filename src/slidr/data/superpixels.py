"""Superpixels of camera images (SLIC and Felzenszwalb-Huttenlocher), cached as lossless 16-bit label PNGs.

Where the files are (predictable, so ``slidr inspect`` and the datasets find them)::

    <root>/<key>/<CHANNEL>/<image file stem>.png

``root`` defaults to ``<folder of the index file>/superpixels`` (``SuperpixelConfig.root`` overrides it); ``key``
names the method and every parameter (``slic_n150_c6_s3``, ``fh_k300_s0.35_m4000``), so variants never collide;
masks computed elsewhere and imported by :mod:`slidr.data.masks` go to ``masks_<name>`` (id 0: no mask).
Each PNG is a standard 16-bit greyscale image holding the label (0, 1, ...) of every pixel at the camera image's
full resolution; its ``slidr-segments`` text chunk holds the number of segments, so a report over finished files
needs no decoding. The files are written with filter type 0 (none), which this module decodes with one
``zlib.decompress`` (about 2 ms for 1600x900, several times faster than a general PNG decoder); other PNGs are read
with Pillow.

The computation (``slidr superpixels``) is resumable: finished files are skipped, files that are partial (no PNG
end chunk) or temporary files of an interrupted run are redone. ``shard=(i, n)`` takes every n-th image of the
sorted image list, starting at the i-th (0-based), so n machines share the work without overlap.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import statistics
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from slidr.config import parse_shard  # noqa: F401  (re-exported: the superpixel helpers in one place)
from slidr.data.io import read_image
from slidr.errors import DataError, SlidrError
from slidr.utils.io import atomic_path, write_json
from slidr.utils.log import logger
from slidr.utils.progress import progress

# The paper's parameters (SLidR supplementary; the authors' release).
SLIC_COMPACTNESS = 6.0
SLIC_SIGMA = 3.0
FH_SCALE = 300.0
FH_SIGMA = 0.35
FH_MIN_SIZE = 4000
METHODS = ("slic", "fh", "masks")
MASK_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
_SEGMENTS_KEY = b"slidr-segments"
_MAX_LABEL = np.iinfo(np.uint16).max


# --------------------------------------------------------------------------------------------------------------
# Where the files are.
# --------------------------------------------------------------------------------------------------------------


def method_key(method: str, n_segments: int = 150, source: Optional[str] = None) -> str:
    """Folder name of a superpixel method and all its parameters, e.g. ``slic_n150_c6_s3``, ``masks_sam``.

    Parameters
    ----------
    method : ``"slic"``, ``"fh"`` or ``"masks"`` (imported, :mod:`slidr.data.masks`).
    n_segments : SLIC's target number of segments (FH and masks ignore it).
    source : name of the imported mask set (``"masks"`` only): letters, digits, ``.``, ``_``, ``-``.
    """
    if method == "masks":
        if not source or not MASK_SET_NAME.fullmatch(source):
            raise SlidrError(f"superpixels: method masks needs the name of the imported mask set "
                             f"(superpixels.source / --name) made of letters, digits, '.', '_', '-', got {source!r}")
        return f"masks_{source}"
    if method == "slic":
        if n_segments < 1:
            raise SlidrError(f"superpixels: n_segments must be >= 1, got {n_segments}")
        return f"slic_n{n_segments}_c{SLIC_COMPACTNESS:g}_s{SLIC_SIGMA:g}"
    if method == "fh":
        return f"fh_k{FH_SCALE:g}_s{FH_SIGMA:g}_m{FH_MIN_SIZE}"
    raise SlidrError(f"superpixels: unknown method {method!r}; choose one of {', '.join(METHODS)}")


def superpixel_root(index_path: str | Path, root: str | Path | None = None) -> Path:
    """The folder holding every method's superpixel folder: ``root`` or ``<index folder>/superpixels``."""
    return Path(root) if root is not None else Path(index_path).resolve().parent / "superpixels"


def superpixel_dir(index_path: str | Path, method: str = "slic", n_segments: int = 150,
                   root: str | Path | None = None, source: Optional[str] = None) -> Path:
    """``<root>/<method key>``: the folder of one method's label PNGs (see the module docstring)."""
    return superpixel_root(index_path, root) / method_key(method, n_segments, source)


def superpixel_path(folder: str | Path, channel: str, image: str | Path) -> Path:
    """Label PNG of camera ``channel``'s image ``image`` (path as in the index) inside method folder ``folder``."""
    return Path(folder) / channel / f"{Path(image).stem}.png"


def computed_superpixel_dirs(index_path: str | Path, root: str | Path | None = None) -> list[Path]:
    """Method folders that exist for an index (e.g. to report whatever superpixels were computed)."""
    base = superpixel_root(index_path, root)
    if not base.is_dir():
        return []
    return sorted(path for path in base.iterdir() if path.is_dir() and path.name.split("_")[0] in METHODS)


# --------------------------------------------------------------------------------------------------------------
# Computing one image.
# --------------------------------------------------------------------------------------------------------------


def compute_superpixels(image: np.ndarray, method: str, n_segments: int = 150) -> np.ndarray:
    """Superpixel labels of one RGB image with the paper's parameters.

    Parameters
    ----------
    image : (H, W, 3) uint8 array.
    method : ``"slic"`` (``n_segments``, compactness 6, sigma 3, labels from 0) or ``"fh"`` (scale 300,
        sigma 0.35, min_size 4000).
    n_segments : SLIC's target number of segments.

    Returns
    -------
    (H, W) uint16 labels 0..S-1.
    """
    from skimage.segmentation import felzenszwalb, slic

    if method == "masks":
        raise SlidrError("superpixels: masks are not computed by slidr but imported (slidr.data.masks)")
    method_key(method, n_segments)  # validates
    if image.ndim != 3 or image.shape[2] != 3:
        raise SlidrError(f"superpixels: expected an (H, W, 3) RGB image, got shape {image.shape}")
    if method == "slic":
        labels = slic(image, n_segments=n_segments, compactness=SLIC_COMPACTNESS, sigma=SLIC_SIGMA, start_label=0)
    else:
        labels = felzenszwalb(image, scale=FH_SCALE, sigma=FH_SIGMA, min_size=FH_MIN_SIZE)
    if labels.max() > _MAX_LABEL:
        raise SlidrError(f"superpixels: {labels.max() + 1} segments do not fit a 16-bit label image")
    return labels.astype(np.uint16)


def count_segments(labels: np.ndarray) -> int:
    """Number of distinct labels in a label map."""
    return int(np.unique(labels).size)


# --------------------------------------------------------------------------------------------------------------
# Label PNGs.
# --------------------------------------------------------------------------------------------------------------


def encode_label_png(labels: np.ndarray, segments: Optional[int] = None, compress_level: int = 6) -> bytes:
    """A 16-bit greyscale PNG (filter type 0) of ``labels`` (H, W) with values in [0, 65535].

    ``segments`` (default: counted) is stored in the ``slidr-segments`` text chunk.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise SlidrError(f"label image must be a non-empty (H, W) array, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() > _MAX_LABEL:
        raise SlidrError(f"labels must be in [0, {_MAX_LABEL}], got [{labels.min()}, {labels.max()}]")
    height, width = labels.shape
    if segments is None:
        segments = count_segments(labels)
    rows = np.zeros((height, 1 + 2 * width), np.uint8)  # each row: filter byte 0, then big-endian samples
    rows[:, 1:] = labels.astype(">u2").view(np.uint8).reshape(height, 2 * width)
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"".join((
        _PNG_SIGNATURE,
        _chunk(b"IHDR", header),
        _chunk(b"tEXt", _SEGMENTS_KEY + b"\x00" + str(int(segments)).encode()),
        _chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)),
        _PNG_END,
    ))


def write_label_png(path: str | Path, labels: np.ndarray, segments: Optional[int] = None) -> None:
    """Write ``labels`` as a label PNG, atomically (a crash never leaves a file that looks finished)."""
    data = encode_label_png(labels, segments)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_label_png(path: str | Path) -> np.ndarray:
    """Labels (H, W) of a label PNG; raises :class:`DataError` naming the file when it is unreadable.

    Returns
    -------
    (H, W) uint16 array, read-only; for this module's files a big-endian view of the decoded bytes (byte order
    is converted only for the pixels a caller takes, e.g. with ``astype``).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"superpixel file {path} does not exist") from None
    chunks = _parse_chunks(data, path)
    ihdr = chunks.get(b"IHDR")
    if ihdr is not None and ihdr[0][8:] == bytes((16, 0, 0, 0, 0)) and b"IDAT" in chunks:
        width, height = struct.unpack(">II", ihdr[0][:8])
        try:
            # bufsize: the exact size, else zlib grows its buffer step by step (2-3x slower here)
            raw = zlib.decompress(b"".join(chunks[b"IDAT"]), bufsize=height * (1 + 2 * width))
        except zlib.error as error:
            raise DataError(f"superpixel file {path} is corrupt: {error}") from None
        if len(raw) == height * (1 + 2 * width):
            rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + 2 * width)
            if not rows[:, 0].any():  # every row unfiltered: the samples are the bytes themselves
                return rows[:, 1:].view(">u2")
    return _read_png_with_pillow(path)


def read_segment_count(path: str | Path) -> int:
    """Number of segments of a label PNG: from its text chunk, else by decoding it."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(256)
    start = head.find(b"tEXt" + _SEGMENTS_KEY + b"\x00")
    if start >= 0:
        length = struct.unpack(">I", head[start - 4:start])[0]
        value = head[start + 4 + len(_SEGMENTS_KEY) + 1:start + 4 + length]
        if len(value) == length - len(_SEGMENTS_KEY) - 1 and value.isdigit():
            return int(value)
    return count_segments(read_label_png(path))


def is_complete_png(path: str | Path) -> bool:
    """True when ``path`` exists, starts with the PNG signature and ends with the PNG end chunk."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size < len(_PNG_SIGNATURE) + len(_PNG_END):
            return False
        with open(path, "rb") as handle:
            start = handle.read(len(_PNG_SIGNATURE))
            handle.seek(size - len(_PNG_END))
            end = handle.read()
    except OSError:
        return False
    return start == _PNG_SIGNATURE and end == _PNG_END


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _parse_chunks(data: bytes, path: Path) -> dict[bytes, list[bytes]]:
    if not data.startswith(_PNG_SIGNATURE):
        raise DataError(f"superpixel file {path} is not a PNG file")
    chunks: dict[bytes, list[bytes]] = {}
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        end = offset + 8 + length + 4
        if end > len(data):
            raise DataError(f"superpixel file {path} is truncated (a partial write?); delete it and rerun "
                            "`slidr superpixels`, which redoes partial files")
        chunks.setdefault(kind, []).append(data[offset + 8:offset + 8 + length])
        if kind == b"IEND":
            return chunks
        offset = end
    raise DataError(f"superpixel file {path} is truncated (no PNG end chunk); rerun `slidr superpixels`, "
                    "which redoes partial files")


def _read_png_with_pillow(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            labels = np.asarray(image)
    except OSError as error:
        raise DataError(f"superpixel file {path} cannot be read: {error}") from None
    if labels.ndim != 2:
        raise DataError(f"superpixel file {path} must be a single-channel label image, got shape {labels.shape}")
    return labels.astype(np.uint16)


# --------------------------------------------------------------------------------------------------------------
# Computing all images of an index.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuperpixelJob:
    """One camera image to segment: its channel, its path as in the index, and the absolute path to read."""

    channel: str
    image: str
    source: Path


def image_jobs(samples: Iterable[dict], data_root: str | Path, channels: Optional[Sequence[str]] = None
               ) -> list[SuperpixelJob]:
    """Every distinct camera image of the index samples, sorted by (channel, image path).

    Parameters
    ----------
    samples : index samples (each with ``"cameras": {channel: {"image": relative path, ...}}``).
    data_root : the dataset root the image paths are relative to.
    channels : only these cameras (default: all).
    """
    seen: dict[tuple[str, str], SuperpixelJob] = {}
    for sample in samples:
        for channel, camera in (sample.get("cameras") or {}).items():
            if channels is not None and channel not in channels:
                continue
            key = (channel, camera["image"])
            if key not in seen:
                seen[key] = SuperpixelJob(channel, camera["image"], Path(data_root) / camera["image"])
    return [seen[key] for key in sorted(seen)]


def shard_jobs(jobs: Sequence[SuperpixelJob], shard: tuple[int, int]) -> list[SuperpixelJob]:
    """Every n-th job starting at the i-th: the n shards partition ``jobs`` (deterministic, balanced)."""
    shard_index, shard_count = shard
    return list(jobs[shard_index::shard_count])


def compute_index_superpixels(jobs: Sequence[SuperpixelJob], folder: str | Path, method: str,
                              n_segments: int = 150, workers: int = 1, show_progress: bool = True,
                              report_name: str = "report.json") -> dict[str, Any]:
    """Compute and write the label PNG of every job that is not finished yet; return (and write) a report.

    Parameters
    ----------
    jobs : the images (see :func:`image_jobs`, :func:`shard_jobs`).
    folder : the method folder (:func:`superpixel_dir`); files go to ``folder/<channel>/<stem>.png``.
    method, n_segments : as :func:`compute_superpixels`.
    workers : processes computing in parallel.
    show_progress : show a progress bar (images/s and ETA).
    report_name : file name of the JSON report written into ``folder``.

    Returns
    -------
    The report: images, computed, skipped, segments per image (min/median/max), wall time and images/s.
    """
    folder = Path(folder)
    if method == "masks":
        raise SlidrError("superpixels: masks are not computed by slidr but imported (slidr.data.masks)")
    method_key(method, n_segments)
    if workers < 1:
        raise SlidrError(f"--workers must be >= 1, got {workers}")
    targets = [superpixel_path(folder, job.channel, job.image) for job in jobs]
    _remove_stale_temporaries({target.parent for target in targets})
    segments: dict[Path, int] = {}
    todo = []
    for job, target in zip(jobs, targets):
        if is_complete_png(target):
            segments[target] = read_segment_count(target)
        else:
            todo.append((str(job.source), str(target), method, n_segments))
    missing = [task[0] for task in todo if not os.path.isfile(task[0])]
    if missing:
        raise DataError(f"{len(missing)} camera image(s) do not exist, e.g. {missing[0]}")
    start = time.perf_counter()
    bar = progress(total=len(todo), desc=f"superpixels {folder.name}", unit="img", disable=not show_progress)
    try:
        for target, count in _run_tasks(todo, workers):
            segments[Path(target)] = count
            bar.update(1)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    counts = [segments[target] for target in targets]
    report = {
        "folder": str(folder),
        "method": method,
        "key": folder.name,
        "images": len(targets),
        "computed": len(todo),
        "skipped": len(targets) - len(todo),
        "workers": workers,
        "wall_s": round(wall, 3),
        "images_per_s": round(len(todo) / wall, 3) if todo and wall > 0 else None,
        "segments_min": min(counts) if counts else None,
        "segments_median": statistics.median(counts) if counts else None,
        "segments_max": max(counts) if counts else None,
    }
    if targets:
        write_json(folder / report_name, report)
    return report


def _run_tasks(todo: list[tuple], workers: int, worker: Callable[[tuple], Any] | None = None) -> Iterable[Any]:
    """``worker`` (default: compute one image's superpixels) applied to every task, in ``workers`` processes."""
    worker = _compute_one if worker is None else worker
    if workers == 1 or len(todo) <= 1:
        yield from map(worker, todo)
        return
    # fork: workers start instantly and inherit the imports; they use only numpy / scikit-image / Pillow.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(min(workers, len(todo))) as pool:
        yield from pool.imap_unordered(worker, todo, chunksize=1)


def _compute_one(task: tuple[str, str, str, int]) -> tuple[str, int]:
    source, target, method, n_segments = task
    image = read_image(source)
    labels = compute_superpixels(image, method, n_segments)
    segments = count_segments(labels)
    write_label_png(target, labels, segments)
    return target, segments


def _remove_stale_temporaries(folders: Iterable[Path]) -> None:
    """Delete temporary files that an interrupted run (killed mid-write) left behind."""
    for folder in folders:
        if folder.is_dir():
            for stale in folder.glob(".*.png.*.tmp"):
                logger.debug("removing partial file %s", stale)
                stale.unlink(missing_ok=True)
