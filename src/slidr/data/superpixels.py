"""Superpixels of camera images (SLIC and Felzenszwalb-Huttenlocher), cached as lossless run-length label files.

Where the files are (predictable, so ``slidr inspect`` and the datasets find them)::

    <root>/<key>/<image path as in the index, with the suffix .runs>

e.g. ``slic_n150_c6_s3/samples/CAM_FRONT/<stem>.runs`` for nuScenes and
``slic_n150_c6_s3/sequences/00/image_2/000000.runs`` for SemanticKITTI: the path mirrors the image's path relative to
the data root, so two images never share a file. ``root`` defaults to ``<folder of the index file>/superpixels``
(``SuperpixelConfig.root`` overrides it); ``key`` names the method and every parameter (``slic_n150_c6_s3``,
``fh_k300_s0.35_m4000``), so variants never collide; masks computed elsewhere and imported by
:mod:`slidr.data.masks` go to ``masks_<name>`` (id 0: no mask).

A label file holds the label (0, 1, ..., at most 65,535) of every pixel at the camera image's full resolution as
runs along rows: a 36-byte header (:data:`RUNS_HEADER`: magic, version, bytes per label, compression, height, width,
number of runs, number of segments, payload size and CRC-32), then, zlib-compressed, the index of each row's first run
((H + 1,) uint32), each run's end column ((R,) uint16, exclusive) and each run's label ((R,) uint8 when every
label is below 256, else uint16), all little-endian. Loading a pretraining sample reads the runs of the rows the
crop samples only and evaluates them at the sampled columns (:class:`LabelMap`), so pixels the crop discards cost
nothing. On the real nuScenes SLIC maps (1600x900, ~110 segments, ~27 runs per row) a file is ~30 KB (~6.3 GB for
nuScenes' 204,894 camera images) and getting a 224x416 crop's labels from it takes ~0.8 ms, against ~43 KB and
~3 ms for the 16-bit PNGs of earlier versions; without compression it takes ~0.4 ms but ~78 KB (16.4 GB): the
reader takes both, the writers compress (measurements: ``slidr bench data``, docs/ARCHITECTURE.md "Superpixels").
The segment count is in the header, so a report over finished files needs no decoding.

Earlier versions wrote 16-bit PNGs to ``<root>/<key>/<CHANNEL>/<image file stem>.png`` (the *legacy layout*), where
SemanticKITTI's ``sequences/00/image_2/000000.png`` and ``sequences/01/image_2/000000.png`` shared one file. They
are still read where that layout cannot collide (nuScenes file names hold the channel and a timestamp), and
``slidr superpixels`` converts them to label files without recomputing; elsewhere they are refused with the
command that recomputes them.

The computation (``slidr superpixels``) is resumable: finished files are skipped, files that are partial or
temporary files of an interrupted run are redone. ``shard=(i, n)`` takes every n-th image of the sorted image
list, starting at the i-th (0-based), so n machines share the work without overlap.
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
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence, cast

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

LABEL_SUFFIX = ".runs"
LEGACY_SUFFIX = ".png"
# magic, version, label bytes, compression, height, width, runs, segments, payload bytes, payload CRC-32
RUNS_HEADER = struct.Struct("<8sHBBIIIIII")
_RUNS_MAGIC = b"SLRUNS\r\n"
_RUNS_VERSION = 1
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


def superpixel_path(folder: str | Path, image: str | Path) -> Path:
    """Label file of the camera image ``image`` (path as in the index, relative to the data root) in ``folder``.

    Raises
    ------
    DataError
        ``image`` is absolute or climbs out of the data root (``..``): its label file would leave ``folder``.
    """
    relative = Path(image)
    if relative.is_absolute() or ".." in relative.parts or not relative.name:
        raise DataError(f"camera image path {image} must be relative to the data root, without '..'")
    return Path(folder) / relative.with_suffix(LABEL_SUFFIX)


def legacy_superpixel_path(folder: str | Path, channel: str, image: str | Path) -> Path:
    """Where earlier versions wrote the label PNG of ``channel``'s image ``image``: ``folder/<channel>/<stem>.png``."""
    return Path(folder) / channel / f"{Path(image).stem}{LEGACY_SUFFIX}"


def legacy_layout_is_unique(dataset_format: str) -> bool:
    """Whether the legacy layout gave every image of a dataset its own file: nuScenes yes (its file names hold the
    channel and a timestamp), SemanticKITTI no (every sequence restarts at ``000000``)."""
    return dataset_format == "nuscenes"


def find_superpixel_file(folder: str | Path, channel: str, image: str | Path, dataset_format: str,
                         recompute_hint: str = "") -> Optional[Path]:
    """The label file of an image: the current one, else a legacy PNG where that layout is unique, else None.

    Parameters
    ----------
    folder : the method folder (:func:`superpixel_dir`).
    channel, image : the camera channel and the image path as in the index.
    dataset_format : the index's format (:func:`legacy_layout_is_unique`).
    recompute_hint : appended to the error below (e.g. "; recompute them with `slidr superpixels ...`").

    Raises
    ------
    DataError
        Only a legacy PNG exists and the legacy layout is not unique for this dataset (it may hold another
        sequence's superpixels).
    """
    path = superpixel_path(folder, image)
    if path.is_file():
        return path
    legacy = legacy_superpixel_path(folder, channel, image)
    if not legacy.is_file():
        return None
    if not legacy_layout_is_unique(dataset_format):
        raise DataError(f"superpixel folder {folder} holds label PNGs in the layout of earlier versions "
                        f"(<CHANNEL>/<image stem>.png), where images of different {dataset_format} sequences share "
                        f"one file (e.g. {legacy}); they cannot be trusted{recompute_hint or '; recompute them'}")
    _warn_legacy_once(Path(folder))
    return legacy


_WARNED_LEGACY: set[Path] = set()


def _warn_legacy_once(folder: Path) -> None:
    if folder not in _WARNED_LEGACY:
        _WARNED_LEGACY.add(folder)
        logger.warning("superpixel folder %s holds label PNGs of an earlier version (slower to read); "
                       "`slidr superpixels` with the same settings converts them to label files", folder)


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
# Label files (row runs).
# --------------------------------------------------------------------------------------------------------------


def encode_labels(labels: np.ndarray, segments: Optional[int] = None, compress: bool = True) -> bytes:
    """The label file (module docstring) of ``labels`` (H, W) with values in [0, 65535].

    Parameters
    ----------
    labels : (H, W) integer array, W <= 65535.
    segments : number of segments stored in the header (default: the number of distinct labels).
    compress : zlib-compress the runs (about 2.5x smaller, ~0.35 ms more per 1600x900 read).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise SlidrError(f"label image must be a non-empty (H, W) array, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() > _MAX_LABEL:
        raise SlidrError(f"labels must be in [0, {_MAX_LABEL}], got [{labels.min()}, {labels.max()}]")
    height, width = labels.shape
    if width > _MAX_LABEL:
        raise SlidrError(f"label images may be at most {_MAX_LABEL} pixels wide, got {width}")
    if segments is None:
        segments = count_segments(labels)
    starts = np.ones((height, width), bool)  # a run starts at column 0 and wherever the label changes
    starts[:, 1:] = labels[:, 1:] != labels[:, :-1]
    run_rows, run_cols = np.nonzero(starts)
    row_starts = np.zeros(height + 1, "<u4")
    np.cumsum(np.bincount(run_rows, minlength=height), out=row_starts[1:])
    run_ends = np.empty(run_cols.size, "<u2")
    run_ends[:-1] = run_cols[1:]
    run_ends[row_starts[1:] - 1] = width  # a row's last run ends at the image's width
    value_type = "<u1" if labels.max() < 256 else "<u2"
    payload = b"".join((row_starts.tobytes(), run_ends.tobytes(),
                        labels[run_rows, run_cols].astype(value_type).tobytes()))
    if compress:
        payload = zlib.compress(payload, 6)
    header = RUNS_HEADER.pack(_RUNS_MAGIC, _RUNS_VERSION, np.dtype(value_type).itemsize, int(compress), height,
                              width, run_cols.size, int(segments), len(payload), zlib.crc32(payload))
    return header + payload


def write_labels(path: str | Path, labels: np.ndarray, segments: Optional[int] = None, compress: bool = True) -> None:
    """Write ``labels`` as a label file, atomically (a crash never leaves a file that looks finished)."""
    data = encode_labels(labels, segments, compress)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


_Runs = tuple[np.ndarray, np.ndarray, np.ndarray]  # row_starts (H+1,), run_ends (R,), values (R,)


class LabelMap:
    """The labels of one image as stored: sampled at a grid of pixels without decoding the others.

    Made by :func:`open_labels` from a label file (row runs) or a legacy label PNG (decoded whole).

    Attributes
    ----------
    shape : (height, width) of the image.
    segments : the number of segments the file records (None: a PNG without the ``slidr-segments`` chunk).
    """

    def __init__(self, shape: tuple[int, int], segments: Optional[int], source: Path,
                 runs: Optional[_Runs] = None,
                 dense: Optional[np.ndarray] = None):
        self.shape = shape
        self.segments = segments
        self.source = source
        self._runs = runs  # row_starts (H+1,), run_ends (R,), values (R,)
        self._dense = dense

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Labels at every (row, column) pair of the grid ``rows`` x ``cols``.

        Parameters
        ----------
        rows : (n,) int row indices, any order, repeats allowed.
        cols : (m,) int column indices, any order, repeats allowed.

        Returns
        -------
        (n, m) uint8 or uint16 (the stored label type): ``labels[rows[:, None], cols[None, :]]``.
        """
        rows = np.asarray(rows, np.intp)
        cols = np.asarray(cols, np.intp)
        height, width = self.shape
        if rows.size and (rows.min() < 0 or rows.max() >= height) or cols.size and (cols.min() < 0 or
                                                                                    cols.max() >= width):
            raise SlidrError(f"label map {self.source} ({width}x{height}): sampled pixels outside the image")
        if self._dense is not None:
            return self._dense[rows[:, None], cols[None, :]].astype(self._dense.dtype.newbyteorder("="))
        row_starts, run_ends, values = cast(_Runs, self._runs)  # not dense: runs
        if rows.size == 0 or cols.size == 0:
            return np.zeros((rows.size, cols.size), values.dtype)
        steps = np.diff(cols)
        order: Optional[slice | np.ndarray]
        if (steps >= 0).all():
            order = None
        elif (steps <= 0).all():
            order = slice(None, None, -1)
        else:
            order = np.argsort(cols, kind="stable")
        # below[e]: how many sampled columns lie left of column e
        below = np.zeros(width + 1, np.intp)
        np.cumsum(np.bincount(cols, minlength=width), out=below[1:])
        first = row_starts[rows].astype(np.intp)
        counts = row_starts[rows + 1].astype(np.intp) - first
        ends = np.cumsum(counts)
        run_index = np.repeat(first - (ends - counts), counts) + np.arange(ends[-1])
        # sampled columns each run holds: differences of `below` at consecutive run ends; a row's first run follows
        # the previous row's last one, which ended at the width with every sampled column left of it
        covered = below[run_ends[run_index]]
        per_run = np.empty_like(covered)
        per_run[0] = covered[0]
        np.subtract(covered[1:], covered[:-1], out=per_run[1:])
        per_run[ends[:-1]] += cols.size
        try:
            grid = np.repeat(values[run_index], per_run).reshape(rows.size, cols.size)
        except ValueError:  # negative counts: run ends that go backwards
            raise DataError(f"superpixel file {self.source} is corrupt (its runs do not tile the image)") from None
        if order is None:
            return grid
        if isinstance(order, slice):
            return grid[:, order]
        out = np.empty_like(grid)
        out[:, order] = grid
        return out

    def read(self) -> np.ndarray:
        """All labels, (H, W) uint8 or uint16 (the stored label type)."""
        if self._dense is not None:
            return self._dense.astype(self._dense.dtype.newbyteorder("="))
        row_starts, run_ends, values = cast(_Runs, self._runs)  # not dense: runs
        ends = run_ends.astype(np.intp)
        starts = np.empty_like(ends)
        starts[1:] = ends[:-1]
        starts[row_starts[:-1]] = 0
        try:
            return np.repeat(values, ends - starts).reshape(self.shape)
        except ValueError:  # negative lengths: run ends that go backwards
            raise DataError(f"superpixel file {self.source} is corrupt (its runs do not tile the image)") from None


def open_labels(path: str | Path) -> LabelMap:
    """Read a label file (or a legacy label PNG) for sampling; raises :class:`DataError` naming a bad file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"superpixel file {path} does not exist") from None
    if data.startswith(_PNG_SIGNATURE):
        dense = read_label_png(path, data)
        return LabelMap((dense.shape[0], dense.shape[1]), _png_segment_count(data[:256]), path, dense=dense)
    shape, segments, runs = _parse_runs(data, path)
    return LabelMap(shape, segments, path, runs=runs)


def read_labels(path: str | Path) -> np.ndarray:
    """All labels (H, W) of a label file or legacy label PNG (uint8 or uint16, native byte order)."""
    return open_labels(path).read()


def read_segment_count(path: str | Path) -> int:
    """Number of segments of a label file (header) or label PNG (text chunk, else by decoding it)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except FileNotFoundError:
        raise DataError(f"superpixel file {path} does not exist") from None
    if head.startswith(_RUNS_MAGIC):
        return _runs_header(head, path).segments
    count = _png_segment_count(head)
    return count if count is not None else count_segments(read_label_png(path))


def is_complete_label_file(path: str | Path) -> bool:
    """True when ``path`` is a whole label file (header and payload) or a whole PNG (signature to end chunk)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(RUNS_HEADER.size)
    except OSError:
        return False
    if head.startswith(_RUNS_MAGIC):  # another version counts as unfinished: `slidr superpixels` redoes it
        return len(head) == RUNS_HEADER.size and RUNS_HEADER.unpack(head)[1] == _RUNS_VERSION and \
            size == RUNS_HEADER.size + _RunsHeader(*RUNS_HEADER.unpack(head)[2:]).payload_size
    return is_complete_png(path)


class _RunsHeader(NamedTuple):
    label_bytes: int
    compressed: int
    height: int
    width: int
    runs: int
    segments: int
    payload_size: int
    payload_crc: int


def _runs_header(data: bytes, path: Path) -> _RunsHeader:
    if len(data) < RUNS_HEADER.size:
        raise DataError(f"superpixel file {path} is truncated (a partial write?); rerun `slidr superpixels`, "
                        "which redoes partial files")
    magic, version, *fields = RUNS_HEADER.unpack_from(data)
    if magic != _RUNS_MAGIC:
        raise DataError(f"superpixel file {path} is neither a slidr label file nor a PNG")
    if version != _RUNS_VERSION:
        raise DataError(f"superpixel file {path} has label file version {version}; this slidr reads version "
                        f"{_RUNS_VERSION} (recompute with `slidr superpixels`)")
    return _RunsHeader(*fields)


def _parse_runs(data: bytes, path: Path) -> tuple[tuple[int, int], int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    header = _runs_header(data, path)
    payload = memoryview(data)[RUNS_HEADER.size:]
    if len(payload) != header.payload_size:
        raise DataError(f"superpixel file {path} is truncated (a partial write?); rerun `slidr superpixels`, "
                        "which redoes partial files")
    if zlib.crc32(payload) != header.payload_crc:
        raise DataError(f"superpixel file {path} is corrupt (checksum mismatch); recompute it with "
                        "`slidr superpixels` after deleting it")
    height, width, runs, label_bytes = header.height, header.width, header.runs, header.label_bytes
    expected = 4 * (height + 1) + (2 + label_bytes) * runs
    if header.compressed:
        try:
            payload = memoryview(zlib.decompress(payload, bufsize=expected))
        except zlib.error as error:
            raise DataError(f"superpixel file {path} is corrupt: {error}") from None
    if label_bytes not in (1, 2) or len(payload) != expected or height == 0 or width == 0:
        raise DataError(f"superpixel file {path} is corrupt (its header does not match its content)")
    row_starts = np.frombuffer(payload, "<u4", height + 1)
    run_ends = np.frombuffer(payload, "<u2", runs, 4 * (height + 1))
    values = np.frombuffer(payload, "<u1" if label_bytes == 1 else "<u2", runs, 4 * (height + 1) + 2 * runs)
    # the structure the readers rely on: every row has runs and ends at the width (the run ends within a row, which
    # the checksum protects, are checked where they are used: decreasing ones make negative counts)
    if row_starts[0] != 0 or row_starts[-1] != runs or (np.diff(row_starts.astype(np.int64)) < 1).any() \
            or (run_ends[row_starts[1:] - 1] != width).any():
        raise DataError(f"superpixel file {path} is corrupt (its runs do not tile the image)")
    return (height, width), header.segments, (row_starts, run_ends, values)


# --------------------------------------------------------------------------------------------------------------
# Label PNGs (the storage of earlier versions; still read, and written for tests and comparisons).
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


def read_label_png(path: str | Path, data: Optional[bytes] = None) -> np.ndarray:
    """Labels (H, W) of a (legacy) label PNG; raises :class:`DataError` naming the file when it is unreadable.

    Parameters
    ----------
    path : the PNG file.
    data : its bytes, when already read.

    Returns
    -------
    (H, W) uint16 array, read-only; for this module's files a big-endian view of the decoded bytes (byte order
    is converted only for the pixels a caller takes, e.g. with ``astype``).
    """
    path = Path(path)
    if data is None:
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


def _png_segment_count(head: bytes) -> Optional[int]:
    """The ``slidr-segments`` text chunk's number, if it is in ``head`` (a PNG's first bytes)."""
    start = head.find(b"tEXt" + _SEGMENTS_KEY + b"\x00")
    if start >= 0:
        length = struct.unpack(">I", head[start - 4:start])[0]
        value = head[start + 4 + len(_SEGMENTS_KEY) + 1:start + 4 + length]
        if len(value) == length - len(_SEGMENTS_KEY) - 1 and value.isdigit():
            return int(value)
    return None


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
                              report_name: str = "report.json", convert_legacy: bool = False) -> dict[str, Any]:
    """Compute and write the label file of every job that is not finished yet; return (and write) a report.

    Parameters
    ----------
    jobs : the images (see :func:`image_jobs`, :func:`shard_jobs`).
    folder : the method folder (:func:`superpixel_dir`); files go to :func:`superpixel_path`.
    method, n_segments : as :func:`compute_superpixels`.
    workers : processes computing in parallel.
    show_progress : show a progress bar (images/s and ETA).
    report_name : file name of the JSON report written into ``folder``.
    convert_legacy : convert label PNGs of the legacy layout instead of recomputing them; only where that layout
        is unique (:func:`legacy_layout_is_unique` of the index's format).

    Returns
    -------
    The report: images, computed, converted (from legacy PNGs), skipped (already done), segments per image
    (min/median/max), wall time and images/s.
    """
    folder = Path(folder)
    if method == "masks":
        raise SlidrError("superpixels: masks are not computed by slidr but imported (slidr.data.masks)")
    method_key(method, n_segments)
    if workers < 1:
        raise SlidrError(f"--workers must be >= 1, got {workers}")
    plan = plan_label_files(jobs, folder, convert_legacy, workers)
    todo = [(str(jobs[i].source), str(plan.targets[i]), method, n_segments) for i in plan.todo]
    missing = [task[0] for task in todo if not os.path.isfile(task[0])]
    if missing:
        raise DataError(f"{len(missing)} camera image(s) do not exist, e.g. {missing[0]}")
    start = time.perf_counter()
    bar = progress(total=len(todo), desc=f"superpixels {folder.name}", unit="img", disable=not show_progress)
    try:
        for target, count in _run_tasks(todo, workers):
            plan.segments[Path(target)] = count
            bar.update(1)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    report = {"folder": str(folder), "method": method, "key": folder.name,
              **plan.report(len(todo), workers, wall)}
    if plan.targets:
        write_json(folder / report_name, report)
    return report


@dataclass
class LabelFilePlan:
    """What :func:`plan_label_files` found: the target of every job, what is done, what is left to compute."""

    targets: list[Path]
    segments: dict[Path, int]  # segments of every finished target (done before, or converted now)
    todo: list[int]  # positions of the jobs to compute
    skipped: int  # targets finished before
    converted: int  # targets converted now from legacy PNGs

    def report(self, computed: int, workers: int, wall: float) -> dict[str, Any]:
        """The common part of a computation's report."""
        counts = [self.segments[target] for target in self.targets]
        return {
            "images": len(self.targets),
            "computed": computed,
            "converted": self.converted,
            "skipped": self.skipped,
            "workers": workers,
            "wall_s": round(wall, 3),
            "images_per_s": round(computed / wall, 3) if computed and wall > 0 else None,
            "segments_min": min(counts) if counts else None,
            "segments_median": statistics.median(counts) if counts else None,
            "segments_max": max(counts) if counts else None,
        }


def plan_label_files(jobs: Sequence[SuperpixelJob], folder: Path, convert_legacy: bool, workers: int = 1
                     ) -> LabelFilePlan:
    """Targets of the jobs; removes what an interrupted run left, skips finished files, converts legacy PNGs.

    Parameters
    ----------
    jobs : the images.
    folder : the method folder.
    convert_legacy : convert the complete label PNGs of the legacy layout (:func:`legacy_superpixel_path`) to
        label files (lossless, no recomputation); False: such files are ignored, their images recomputed.
    workers : processes converting in parallel.
    """
    targets = [superpixel_path(folder, job.image) for job in jobs]
    _remove_stale_temporaries({target.parent for target in targets})
    segments: dict[Path, int] = {}
    todo, conversions = [], []
    for position, (job, target) in enumerate(zip(jobs, targets)):
        legacy = legacy_superpixel_path(folder, job.channel, job.image)
        if is_complete_label_file(target):
            segments[target] = read_segment_count(target)
        elif convert_legacy and is_complete_png(legacy):
            conversions.append((str(legacy), str(target)))
        else:
            todo.append(position)
    for target, count in _run_tasks(conversions, workers, _convert_legacy_one):
        segments[Path(target)] = count
    if conversions:
        logger.info("converted %d label PNGs of an earlier version in %s to label files; the old "
                    "<CHANNEL>/*.png files there are no longer read and may be deleted", len(conversions), folder)
    return LabelFilePlan(targets, segments, todo, len(targets) - len(todo) - len(conversions), len(conversions))


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
    write_labels(target, labels, segments)
    return target, segments


def _convert_legacy_one(task: tuple[str, str]) -> tuple[str, int]:
    legacy, target = task
    segments = read_segment_count(legacy)
    write_labels(target, read_label_png(legacy), segments)
    return target, segments


def _remove_stale_temporaries(folders: Iterable[Path]) -> None:
    """Delete temporary files that an interrupted run (killed mid-write) left behind."""
    for folder in folders:
        if folder.is_dir():
            for pattern in (f".*{LABEL_SUFFIX}.*.tmp", f".*{LEGACY_SUFFIX}.*.tmp"):
                for stale in folder.glob(pattern):
                    logger.debug("removing partial file %s", stale)
                    stale.unlink(missing_ok=True)
