"""Superpixels from masks computed elsewhere (SAM, SEEM or any segmenter), imported into slidr's label files.

``slidr superpixels --method masks --from DIR [--name NAME]`` reads one mask file per camera image of the index and
stores it like SLIC's superpixels (:mod:`slidr.data.superpixels`) in ``<root>/masks_<NAME>/<image path>.runs``;
``superpixels: {method: masks, source: NAME}`` then makes the datasets read them. NAME defaults to the name of DIR.

Where the mask files are: ``DIR/<image path without its suffix>.<ext>``, mirroring the dataset (nuScenes
``samples/CAM_FRONT/x.jpg`` -> ``DIR/samples/CAM_FRONT/x.png``, SemanticKITTI ``sequences/00/image_2/000000.png`` ->
``DIR/sequences/00/image_2/000000.png``), or, for nuScenes, ``DIR/<CHANNEL>/<image file stem>.<ext>``
(``DIR/CAM_FRONT/x.png``; SemanticKITTI's sequences would share those files). Every image of the index must have
exactly one.

Accepted files (the format is chosen by the extension):

* ``.png``: a label image. Greyscale (8 or 16 bits, or 32-bit integer) and palette images: the value (palette
  index) of a pixel is its segment, 0 = no segment. RGB(A): each colour is a segment, black (and alpha 0) = none.
* ``.npz`` / ``.npy``: an (H, W) integer label array (0 = none), or an (M, H, W) stack of binary masks (bool, or
  integers in {0, 1}: SAM's automatic mask generator's ``segmentation`` arrays stacked with numpy). In an
  ``.npz`` with several arrays, the one named ``labels``, ``segmentation``, ``masks`` or ``segments``.
* ``.json``: SAM-style COCO run-length encodings: a list of annotations (``SamAutomaticMaskGenerator`` with
  ``output_mode="coco_rle"``, SAM's ``amg.py --convert-to-rle``) or a dict with an ``annotations`` list (SA-1B),
  each with ``"segmentation": {"size": [h, w], "counts": ...}`` (compressed string or list of run lengths).
* a folder ``DIR/<CHANNEL>/<stem>/`` of binary mask PNGs (SAM's ``amg.py`` default output; other files ignored).

Overlaps: masks are painted from the largest to the smallest, so a smaller mask lies on top of the larger ones
it overlaps (as Seal paints SAM's masks); a mask hidden entirely disappears. Ids are then renumbered 1..S
(largest mask first; label images by increasing value; colours by increasing ``0xRRGGBB``).

Pixels no mask covers keep id 0, ``UNLABELLED`` (``fill="unlabelled"``, the default): pretraining leaves the pairs
that fall on them out of the superpixel losses (:func:`slidr.data.pairing.pairs_in_labelled_superpixels`), so no
"segment" is made of whatever the segmenter left out (Seal instead merges those pixels with its largest SAM mask).
``fill="nearest"`` gives each of them the id of the nearest covered pixel (Euclidean distance), so that every
pixel belongs to a segment as with SLIC.

Sizes: a mask must have its image's size (the index's); ``resize=True`` resamples one of another size by nearest
neighbour (pixel centres: row ``i`` reads row ``floor((i + 0.5) h / H)``). At most 65,535 segments per image.
"""

from __future__ import annotations

import json
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from slidr.data.augment import full_image_transform, transform_labels
from slidr.data.pairing import UNLABELLED
from slidr.data.superpixels import (
    MASK_SET_NAME,
    SuperpixelJob,
    _run_tasks,
    plan_label_files,
    write_labels,
)
from slidr.errors import DataError, SlidrError
from slidr.utils.io import write_json
from slidr.utils.progress import progress

MASK_EXTENSIONS = (".png", ".npz", ".npy", ".json")
FILL_MODES = ("unlabelled", "nearest")
NPZ_KEYS = ("labels", "segmentation", "masks", "segments")
_MAX_SEGMENTS = np.iinfo(np.uint16).max
_SOURCE_FILE = "source.json"


# --------------------------------------------------------------------------------------------------------------
# Finding the mask file of an image.
# --------------------------------------------------------------------------------------------------------------


def mask_set_name(from_dir: str | Path, name: Optional[str] = None) -> str:
    """The mask set's name (folder ``masks_<name>``): ``name``, else the name of ``from_dir``."""
    chosen = name if name is not None else Path(from_dir).resolve().name
    if not MASK_SET_NAME.fullmatch(chosen):
        raise SlidrError(f"superpixels: mask set name {chosen!r} must be letters, digits, '.', '_', '-' "
                         "(pass --name NAME)")
    return chosen


def find_mask_file(from_dir: str | Path, channel: str, image: str | Path, channel_layout: bool = True) -> Path:
    """The mask file (or folder of mask PNGs) of an image; exactly one must exist.

    Looked for at ``from_dir/<image path without its suffix>.<ext>`` (the dataset's layout mirrored) and, where
    ``channel_layout``, at ``from_dir/<channel>/<image stem>.<ext>`` (or the folders ``.../<stem>/``). The channel
    layout cannot tell apart images of different SemanticKITTI sequences (every sequence restarts at ``000000``):
    pass ``channel_layout=False`` there (:func:`slidr.data.superpixels.legacy_layout_is_unique`).

    Raises
    ------
    DataError
        None or several of them exist.
    """
    relative = Path(image)
    bases = [Path(from_dir) / relative.with_suffix("")]
    if channel_layout:
        bases.append(Path(from_dir) / channel / relative.stem)
    found = []
    for base in bases:
        found += [base.with_name(base.name + ext) for ext in MASK_EXTENSIONS
                  if base.with_name(base.name + ext).is_file()]
        if base.is_dir():
            found.append(base)
    if not found:
        expected = " or ".join(f"{base}{{{','.join(MASK_EXTENSIONS)}}}" for base in bases)
        raise DataError(f"no mask file for image {image}: expected {expected} or a folder {bases[-1]}/ of mask PNGs")
    if len(found) > 1:
        raise DataError(f"several mask files for image {image}: {', '.join(str(path) for path in found)}; "
                        "keep one")
    return found[0]


# --------------------------------------------------------------------------------------------------------------
# Reading one mask file.
# --------------------------------------------------------------------------------------------------------------


def read_mask_file(path: str | Path) -> np.ndarray:
    """Segment ids (H, W) int64 of a mask file (any accepted format), 0 = no segment; ids are not renumbered.

    Raises
    ------
    DataError
        The file is unreadable, corrupt or not of an accepted layout; the message names it.
    """
    path = Path(path)
    if path.is_dir():
        return _read_mask_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        return _read_label_image(path)
    if suffix in (".npz", ".npy"):
        return _labels_from_array(_read_array(path), path)
    if suffix == ".json":
        return _read_rle_json(path)
    raise DataError(f"mask file {path}: unknown format {suffix!r}; use one of {', '.join(MASK_EXTENSIONS)}")


def paint_masks(masks: Iterable[np.ndarray], areas: Optional[Sequence[int]] = None) -> np.ndarray:
    """Label map of overlapping binary masks: the smaller mask on top, ids 1..M from the largest mask.

    Parameters
    ----------
    masks : M boolean (H, W) arrays (or an (M, H, W) array), possibly overlapping.
    areas : their pixel counts, if known (else counted).

    Returns
    -------
    (H, W) int64: 0 where no mask is, else ``1 + rank`` of the topmost mask, masks ranked by decreasing area
    (stable: equal areas keep their order, the later one on top).
    """
    masks = list(masks)
    if not masks:
        raise ValueError("paint_masks needs at least one mask")
    if areas is None:
        areas = [int(np.count_nonzero(mask)) for mask in masks]
    return _paint_in_order(masks[i] for i in _largest_first(areas))


def _largest_first(areas: Sequence[int]) -> list[int]:
    return sorted(range(len(areas)), key=lambda i: -areas[i])


def _paint_in_order(masks: Iterable[np.ndarray]) -> np.ndarray:
    """Paint binary masks one after the other (each on top of the previous ones) with ids 1, 2, ..."""
    labels = None
    for rank, mask in enumerate(masks):
        if labels is None:
            labels = np.zeros(mask.shape, np.int64)
        labels[np.asarray(mask, bool)] = rank + 1
    assert labels is not None
    return labels


def decode_rle(rle: dict) -> np.ndarray:
    """Binary mask (h, w) bool of a COCO run-length encoding ``{"size": [h, w], "counts": ...}``.

    ``counts`` is a list of run lengths or the compressed string of pycocotools; runs alternate 0s and 1s
    (starting with 0s) over the pixels in column-major order.
    """
    height, width, counts = _rle_parts(rle)
    return _counts_to_mask(counts, height, width)


def rle_counts_from_string(text: str) -> list[int]:
    """Run lengths of pycocotools' compressed RLE string.

    Each count is written in 5-bit groups, least significant first, as characters ``48 + group`` with bit 0x20
    set on every group but the last; the last group's bit 0x10 is the sign. From the fourth count on, the
    string holds the difference to the count two places before.
    """
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift = 0, 0
        while True:
            if position >= len(text):
                raise ValueError("truncated RLE string")
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {text[position]!r} is not part of an RLE string")
            value |= (code & 0x1F) << shift
            position += 1
            shift += 5
            if not code & 0x20:
                if code & 0x10:
                    value |= -1 << shift
                break
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def mask_labels(path: str | Path, image_hw: Sequence[int], fill: str = "unlabelled", resize: bool = False
                ) -> np.ndarray:
    """The superpixel labels (H, W) uint16 of one image from its mask file: read, checked, filled, renumbered.

    Parameters
    ----------
    path : the mask file (or folder of mask PNGs).
    image_hw : (H, W) of the camera image (the index's).
    fill : ``"unlabelled"`` (uncovered pixels keep id 0) or ``"nearest"`` (the id of the nearest covered pixel).
    resize : resample a mask of another size by nearest neighbour instead of refusing it.

    Returns
    -------
    (H, W) uint16 ids: 0 = no mask, 1..S the segments.
    """
    path = Path(path)
    if fill not in FILL_MODES:
        raise SlidrError(f"superpixels: fill must be one of {', '.join(FILL_MODES)}, got {fill!r}")
    labels = read_mask_file(path)
    height, width = (int(value) for value in image_hw)
    if labels.shape != (height, width):
        if not resize:
            raise DataError(f"mask file {path} is {labels.shape[1]}x{labels.shape[0]} but its image is "
                            f"{width}x{height}; pass --resize-masks to resample it by nearest neighbour")
        labels = transform_labels(labels, full_image_transform(labels.shape), (height, width))
    if fill == "nearest":
        labels = _fill_nearest(labels)
    values, inverse = np.unique(labels, return_inverse=True)
    segments = int(np.count_nonzero(values))
    if segments > _MAX_SEGMENTS:
        raise DataError(f"mask file {path} has {segments} segments; at most {_MAX_SEGMENTS} fit 16-bit ids")
    renumbered = inverse.reshape(labels.shape) + (0 if values[0] == UNLABELLED else 1)
    return renumbered.astype(np.uint16)


# --------------------------------------------------------------------------------------------------------------
# Importing the masks of every image of an index.
# --------------------------------------------------------------------------------------------------------------


def image_sizes(samples: Iterable[dict]) -> dict[tuple[str, str], tuple[int, int]]:
    """(height, width) of every camera image of the index samples, keyed by (channel, image path)."""
    return {(channel, camera["image"]): (int(camera["height"]), int(camera["width"]))
            for sample in samples for channel, camera in (sample.get("cameras") or {}).items()}


def import_index_masks(jobs: Sequence[SuperpixelJob], sizes: dict[tuple[str, str], tuple[int, int]],
                       from_dir: str | Path, folder: str | Path, fill: str = "unlabelled", resize: bool = False,
                       workers: int = 1, show_progress: bool = True, report_name: str = "report.json",
                       convert_legacy: bool = False, channel_layout: bool = True) -> dict[str, Any]:
    """Import the mask file of every job that is not finished yet into ``folder``; return (and write) a report.

    Every image must have exactly one mask file (checked first, one error for all). Resumable and shardable like
    :func:`slidr.data.superpixels.compute_index_superpixels`: finished label files are skipped. ``folder`` keeps
    the import settings in ``source.json``; importing other masks or settings into it is refused.

    Parameters
    ----------
    jobs : the images (:func:`slidr.data.superpixels.image_jobs`, :func:`~slidr.data.superpixels.shard_jobs`).
    sizes : (height, width) of each image (:func:`image_sizes`).
    from_dir : the folder of the mask files (see the module docstring).
    folder : the method folder, ``superpixel_dir(index, "masks", source=name)``.
    fill, resize : see :func:`mask_labels`.
    workers : processes working in parallel.
    show_progress : show a progress bar.
    report_name : file name of the JSON report written into ``folder``.
    convert_legacy : convert label PNGs of the legacy layout instead of importing again (see
        :func:`slidr.data.superpixels.plan_label_files`).
    channel_layout : also look for mask files at ``DIR/<CHANNEL>/<stem>`` (:func:`find_mask_file`).

    Returns
    -------
    The report: images, computed (imported), converted, skipped, segments (masks) per image min/median/max, mean
    fraction of pixels without mask over the images imported by this run, wall time and images/s.
    """
    from_dir, folder = Path(from_dir), Path(folder)
    if fill not in FILL_MODES:
        raise SlidrError(f"superpixels: --fill must be one of {', '.join(FILL_MODES)}, got {fill!r}")
    if workers < 1:
        raise SlidrError(f"--workers must be >= 1, got {workers}")
    if not from_dir.is_dir():
        raise DataError(f"mask folder {from_dir} does not exist")
    missing, sources = [], []
    for job in jobs:
        try:
            sources.append(find_mask_file(from_dir, job.channel, job.image, channel_layout))
        except DataError as error:
            missing.append(str(error))
    if missing:
        raise DataError(f"{len(missing)} of {len(jobs)} camera images have no usable mask file, e.g. {missing[0]}")
    settings = {"from": str(from_dir.resolve()), "fill": fill, "resize": resize}
    _check_import_settings(folder, settings)
    plan = plan_label_files(jobs, folder, convert_legacy, workers)
    todo = [(str(sources[i]), str(plan.targets[i]), sizes[(jobs[i].channel, jobs[i].image)], fill, resize)
            for i in plan.todo]
    start = time.perf_counter()
    unlabelled = []
    bar = progress(total=len(todo), desc=f"masks {folder.name}", unit="img", disable=not show_progress)
    try:
        for target, count, fraction in _run_tasks(todo, workers, _import_one):
            plan.segments[Path(target)] = count
            unlabelled.append(fraction)
            bar.update(1)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    report = {
        "folder": str(folder),
        "method": "masks",
        "key": folder.name,
        **settings,
        **plan.report(len(todo), workers, wall),
        "unlabelled_fraction_mean": round(float(np.mean(unlabelled)), 6) if unlabelled else None,
    }
    if plan.targets:
        write_json(folder / report_name, report)
    return report


def _import_one(task: tuple) -> tuple[str, int, float]:
    source, target, image_hw, fill, resize = task
    labels = mask_labels(source, image_hw, fill, resize)
    segments = int(labels.max())  # ids are 1..S
    write_labels(target, labels, segments)
    return target, segments, float(np.mean(labels == UNLABELLED))


def _check_import_settings(folder: Path, settings: dict[str, Any]) -> None:
    marker = folder / _SOURCE_FILE
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != settings:
            raise SlidrError(f"superpixels: {folder} holds masks imported with other settings ({previous}, now "
                             f"{settings}); choose another --name or delete that folder")
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json(marker, settings)


# --------------------------------------------------------------------------------------------------------------
# Formats.
# --------------------------------------------------------------------------------------------------------------


def _read_label_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            pixels = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"mask file {path} cannot be read as a PNG: {error}") from None
    if mode in ("RGB", "RGBA"):
        rgb = pixels[..., :3].astype(np.int64)
        labels = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        if mode == "RGBA":
            labels[pixels[..., 3] == 0] = UNLABELLED
        return labels
    if mode == "LA":
        pixels = pixels[..., 0]
    elif mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise DataError(f"mask file {path} has PNG mode {mode}; expected a greyscale, palette or RGB label image")
    labels = pixels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"mask file {path} has negative segment ids")
    return labels


def _read_array(path: Path) -> np.ndarray:
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        loaded = np.load(path, allow_pickle=False)
    except unreadable as error:
        raise DataError(f"mask file {path} cannot be read: {error}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = list(loaded.files)
        key = names[0] if len(names) == 1 else next((name for name in NPZ_KEYS if name in names), None)
        if key is None:
            raise DataError(f"mask file {path} holds arrays {names}; name the masks one of {', '.join(NPZ_KEYS)}")
        try:
            return loaded[key]
        except unreadable as error:
            raise DataError(f"mask file {path} cannot be read: {error}") from None


def _labels_from_array(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype != bool and not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"mask file {path}: expected integer labels or boolean masks, got dtype {array.dtype}")
    if array.ndim == 2:
        labels = array.astype(np.int64)
        if labels.size and labels.min() < 0:
            raise DataError(f"mask file {path} has negative segment ids")
        return labels
    if array.ndim == 3:
        if array.dtype != bool and array.size and (array.min() < 0 or array.max() > 1):
            raise DataError(f"mask file {path}: an (M, H, W) array must hold binary masks (0/1), got values in "
                            f"[{array.min()}, {array.max()}]")
        if array.shape[0] == 0:
            return np.zeros(array.shape[1:], np.int64)
        return paint_masks(array.astype(bool))
    raise DataError(f"mask file {path}: expected an (H, W) label array or (M, H, W) masks, got shape {array.shape}")


def _read_rle_json(path: Path) -> np.ndarray:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"mask file {path} cannot be read as JSON: {error}") from None
    annotations = content.get("annotations") if isinstance(content, dict) else content
    if not isinstance(annotations, list):
        raise DataError(f"mask file {path}: expected a list of annotations or a dict with an 'annotations' list")
    parts = []
    for number, annotation in enumerate(annotations):
        rle = annotation.get("segmentation", annotation) if isinstance(annotation, dict) else None
        if not isinstance(rle, dict):
            raise DataError(f"mask file {path}: annotation {number} has no RLE 'segmentation' "
                            "({'size': [h, w], 'counts': ...}); polygons are not supported")
        try:
            parts.append(_rle_parts(rle))
        except ValueError as error:
            raise DataError(f"mask file {path}: annotation {number}: {error}") from None
    if not parts:
        image = content.get("image", {}) if isinstance(content, dict) else {}
        if "height" in image and "width" in image:
            return np.zeros((int(image["height"]), int(image["width"])), np.int64)
        raise DataError(f"mask file {path} holds no mask (and no image size)")
    sizes = {(height, width) for height, width, _ in parts}
    if len(sizes) > 1:
        raise DataError(f"mask file {path}: its masks have different sizes {sorted(sizes)}")
    height, width = sizes.pop()
    # decoded one at a time, in painting order: a few hundred full-resolution masks never sit in memory at once
    order = _largest_first([sum(counts[1::2]) for _, _, counts in parts])
    return _paint_in_order(_counts_to_mask(parts[i][2], height, width) for i in order)


def _read_mask_folder(path: Path) -> np.ndarray:
    files = sorted(path.glob("*.png"), key=lambda file: (len(file.stem), file.stem))
    if not files:
        raise DataError(f"mask folder {path} holds no PNG mask")
    masks = [_read_label_image(file) != 0 for file in files]
    shapes = {mask.shape for mask in masks}
    if len(shapes) > 1:
        raise DataError(f"mask folder {path}: its masks have different sizes {sorted(shapes)}")
    return paint_masks(masks)


def _rle_parts(rle: dict) -> tuple[int, int, list[int]]:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"RLE 'size' must be [height, width], got {size!r}")
    height, width = size
    if isinstance(counts, str):
        counts = rle_counts_from_string(counts)
    elif isinstance(counts, bytes):
        counts = rle_counts_from_string(counts.decode("ascii"))
    elif not (isinstance(counts, list) and all(isinstance(v, int) for v in counts)):
        raise ValueError("RLE 'counts' must be a string or a list of integers")
    if any(value < 0 for value in counts) or sum(counts) != height * width:
        raise ValueError(f"RLE counts (sum {sum(counts)}) do not cover the {height}x{width} mask")
    return height, width, counts


def _counts_to_mask(counts: list[int], height: int, width: int) -> np.ndarray:
    runs = np.asarray(counts, np.int64)
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)  # column-major
    return flat.reshape(width, height).T


def _fill_nearest(labels: np.ndarray) -> np.ndarray:
    uncovered = labels == UNLABELLED
    if not uncovered.any() or uncovered.all():
        return labels
    from scipy.ndimage import distance_transform_edt

    nearest = distance_transform_edt(uncovered, return_distances=False, return_indices=True)
    return labels[nearest[0], nearest[1]]
