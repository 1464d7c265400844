"""The dataset index: everything training and evaluation need to know about a dataset, in one file.

``slidr prepare nuscenes`` / ``slidr prepare semantickitti`` write it (:mod:`slidr.data.prepare_nuscenes`,
:mod:`slidr.data.prepare_semantickitti`); everything after reads only it (:func:`load_index`), never the nuScenes
devkit, so data-loader workers stay small and start fast.

Logical content (docs/ARCHITECTURE.md, "Index"): ``format``, ``version``, ``root``, ``scenes``, ``splits`` and
``samples``, one dict per keyframe / scan. nuScenes samples also carry the parts of the devkit's transform chain,
so that projection can repeat the devkit's arithmetic exactly (:mod:`slidr.data.projection`): ``lidar_to_ego``
(the lidar's calibrated sensor) and, per camera, ``ego_pose`` (ego -> global at the camera's time) and
``camera_to_ego`` (its calibrated sensor). ``lidar_to_global`` and each camera's ``lidar_to_camera`` are derived
from them when a sample is read (float64: ``inv(camera_to_ego) @ inv(camera ego_pose) @ ego_pose @
lidar_to_ego``).

Two kinds of file are read, told apart by their content:

- what :func:`write_index` (and so ``slidr prepare``) writes: an uncompressed ``.npz`` holding a JSON header and
  the samples as columns of numpy arrays (:mod:`slidr.data.index_columns`). For nuScenes v1.0-trainval (34,149
  keyframes) it is about 62 MB and loads in about a tenth of a second;
- a plain JSON file as in the architecture document, ``"samples": [{...}, ...]`` (handy for small hand-written
  indexes; ``lidar_to_camera`` and ``lidar_to_global`` are then taken as given).

The JSON column layout of earlier versions (``"layout": "columns"``) is refused with a message to re-run
``slidr prepare``.

In memory, :class:`DatasetIndex` keeps the columns as numpy arrays (shared copy-on-write by forked workers) and
builds a sample's dict when it is read; matrices come back as read-only float64 arrays.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from slidr.data.index_columns import SEPARATOR, ZIP_MAGIC, Columns, is_missing, read_columns, write_columns
from slidr.data.splits import every_kth_scan, every_kth_scene
from slidr.data.transforms import invert_rigid
from slidr.errors import DataError
from slidr.utils.io import atomic_path

FORMATS = ("nuscenes", "semantickitti", "kitti_object")
SEGMENTATION_FORMATS = ("nuscenes", "semantickitti")  # formats with per-point labels: the values of data.dataset


class SampleList(Sequence):
    """The samples of an index, as a read-only sequence of dicts built on access from compact columns."""

    def __init__(self, columns: Columns):
        self._columns = columns
        self._leaves = [(path, path.split(SEPARATOR)) for path in columns.columns]

    def __len__(self) -> int:
        return self._columns.size

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self)))]
        i = int(position)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {position} out of range (the index has {len(self)} samples)")
        sample: dict = {}
        for path, (*parents, leaf) in self._leaves:
            value = self._columns.value(path, i)
            if is_missing(value):
                continue
            node = sample
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
        sample.setdefault("cameras", {})  # an empty camera dict has no leaf column
        _add_derived_transforms(sample)
        return sample

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def column(self, path: str) -> list:
        """All values of one leaf (e.g. ``"scene"`` or ``"token"``) without building the sample dicts; ``None``
        for samples that lack it."""
        if path not in self._columns.columns:
            raise KeyError(path)
        return self._columns.values(path)


class DatasetIndex:
    """A loaded index (see the module docstring).

    Attributes
    ----------
    format : ``"nuscenes"`` or ``"semantickitti"``.
    version : dataset version (``v1.0-mini``, ...; ``"semantickitti"`` for KITTI).
    root : absolute data root; sample paths are relative to it.
    scenes : scene (sequence) name -> ``{"description", "location", "log"}``, in dataset order.
    splits : split name -> scene (sequence) names.
    samples : :class:`SampleList`, one dict per keyframe / scan.
    path : the index file (``None`` if built in memory).
    """

    def __init__(self, format: str, version: str, root: str, scenes: dict, splits: dict, samples: SampleList,
                 path: Optional[Path] = None):
        self.format = format
        self.version = version
        self.root = root
        self.scenes = scenes
        self.splits = splits
        self.samples = samples
        self.path = path

    def __len__(self) -> int:
        return len(self.samples)

    def resolve(self, relative: str) -> Path:
        """Absolute path of a file named relative to the data root."""
        return Path(self.root) / relative

    def sample_indices(self, split: Optional[str] = None, label_fraction: float = 1.0) -> np.ndarray:
        """Positions in :attr:`samples` of a split's samples, reduced to a label fraction.

        Parameters
        ----------
        split : a name of :attr:`splits`; ``None`` takes every scene.
        label_fraction : 1.0 keeps all; below, nuScenes keeps every k-th scene, SemanticKITTI and KITTI object
            every k-th scan / frame, ``k = round(1 / label_fraction)`` (:mod:`slidr.data.splits`).

        Returns
        -------
        (S,) int64 sample positions, in split order (scene order, then time).
        """
        if split is None:
            scene_order = list(self.scenes)
        elif split in self.splits:
            scene_order = list(self.splits[split])
        else:
            raise DataError(f"index {self.path or ''}: no split {split!r}; it has {', '.join(self.splits) or 'none'}")
        if self.format == "nuscenes" and label_fraction < 1.0:
            scene_order = every_kth_scene(scene_order, label_fraction)
        rank = {name: position for position, name in enumerate(scene_order)}
        scene_of_sample = self.samples.column("scene")
        chosen = [i for i, name in enumerate(scene_of_sample) if name in rank]
        chosen.sort(key=lambda i: rank[scene_of_sample[i]])  # stable: keeps time order inside a scene
        if self.format in ("semantickitti", "kitti_object") and label_fraction < 1.0:
            chosen = every_kth_scan(chosen, label_fraction)
        return np.asarray(chosen, dtype=np.int64)

    def header(self) -> dict:
        """Everything but the samples, as written in the file."""
        return {"format": self.format, "version": self.version, "root": self.root, "scenes": self.scenes,
                "splits": self.splits}



def load_index(path: str | Path) -> DatasetIndex:
    """Load an index file written by ``slidr prepare`` (or a plain hand-written JSON one).

    Raises
    ------
    DataError
        The file is missing, damaged, of an older slidr's layout, or lacks required keys; the message names the
        file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            prepared = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    except FileNotFoundError:
        raise DataError(f"index file {path} does not exist; create it with `slidr prepare`") from None
    except IsADirectoryError:
        raise DataError(f"index file {path} is a folder; pass the file `slidr prepare --out` wrote") from None
    header, columns = _read_prepared(path) if prepared else _read_plain(path)
    for key in ("format", "root"):
        if key not in header:
            raise DataError(f"index file {path} lacks the key {key!r}")
    if header["format"] not in FORMATS:
        raise DataError(f"index file {path}: unknown format {header['format']!r}; expected one of {FORMATS}")
    root = Path(header["root"])
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    return DatasetIndex(header["format"], header.get("version", ""), str(root), dict(header.get("scenes", {})),
                        dict(header.get("splits", {})), SampleList(columns), path=path)


def _read_prepared(path: Path) -> tuple[dict, Columns]:
    try:
        return read_columns(path)
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"index file {path} is damaged or not a slidr index ({error}); re-run `slidr prepare` "
                        f"to rewrite it") from None


def _read_plain(path: Path) -> tuple[dict, Columns]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"index file {path} is neither a prepared index nor valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise DataError(f"index file {path} must hold a JSON object")
    if data.get("layout") == "columns":
        raise DataError(f"index file {path} is in the JSON column layout of an earlier slidr, which is no longer "
                        f"read; re-run `slidr prepare` to rewrite it")
    if "samples" not in data:
        raise DataError(f"index file {path} lacks the key 'samples'")
    try:
        columns = Columns.from_samples(data.pop("samples"))
    except (TypeError, ValueError) as error:
        raise DataError(f"index file {path} is malformed: {error}") from None
    return data, columns


def write_index(path: str | Path, header: Mapping[str, Any], samples: Sequence[Mapping]) -> None:
    """Write an index (atomically: an interrupted write leaves any earlier file untouched).

    Parameters
    ----------
    path : the index file to write (conventionally ``index.npz``; the content, not the name, tells its kind).
    header : ``format`` (one of :data:`FORMATS`), ``version``, ``root``, ``scenes``, ``splits``.
    samples : one dict per sample (the logical layout of the module docstring). Leaves may be numbers, strings,
        ``None``, numeric arrays (same shape in every sample, or varying first dimension, e.g. (K, 7) boxes) or
        other JSON values (e.g. lists of class names); a leaf may be absent from some samples.
    """
    if header.get("format") not in FORMATS:
        raise ValueError(f"index format must be one of {FORMATS}, got {header.get('format')!r}")
    columns = Columns.from_samples(samples)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write_columns(handle, header, columns)


def check_index_dataset(index: DatasetIndex, dataset: str, setting: str = "data.dataset") -> None:
    """Refuse an index whose format contradicts the dataset a configuration names.

    A nuScenes index evaluated as SemanticKITTI would otherwise give a table of 19 meaningless classes.

    Raises
    ------
    DataError
        ``index.format != dataset``; the message names the index file, its format and the setting.
    """
    if index.format == dataset:
        return
    if index.format not in SEGMENTATION_FORMATS:
        raise DataError(f"index {index.path or '(in memory)'} holds {index.format} samples (3D boxes, no point "
                        f"labels); {setting} is {dataset!r}: use a {dataset} index (slidr prepare {dataset})")
    if index.format != dataset:
        raise DataError(f"index {index.path or '(in memory)'} holds {index.format} samples but {setting} is "
                        f"{dataset!r}; set {setting}={index.format} or use a {dataset} index")


def index_dataset(index: DatasetIndex, command: str) -> str:
    """The dataset (label set) of an index's scans, for commands that read it from the index (knn, similarity).

    Raises
    ------
    DataError
        The index holds no labelled point clouds (``kitti_object``: boxes).
    """
    if index.format not in SEGMENTATION_FORMATS:
        raise DataError(f"index {index.path or '(in memory)'} holds {index.format} samples (3D boxes, no point "
                        f"labels); {command} needs a nuScenes or SemanticKITTI index")
    return index.format


def _add_derived_transforms(sample: dict) -> None:
    """Compose ``lidar_to_global`` / ``lidar_to_camera`` from the devkit chain's parts where they are absent."""
    if "lidar_to_ego" not in sample or "ego_pose" not in sample:
        return
    lidar_to_global = sample.get("lidar_to_global")
    if lidar_to_global is None:
        lidar_to_global = sample["ego_pose"] @ sample["lidar_to_ego"]
        sample["lidar_to_global"] = lidar_to_global
    for camera in sample.get("cameras", {}).values():
        if "lidar_to_camera" not in camera and "camera_to_ego" in camera and "ego_pose" in camera:
            camera["lidar_to_camera"] = (invert_rigid(camera["camera_to_ego"]) @ invert_rigid(camera["ego_pose"])
                                         @ lidar_to_global)
