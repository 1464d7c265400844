"""The dataset index: everything training and evaluation need to know about a dataset, in one JSON file.

``slidr prepare nuscenes`` / ``slidr prepare semantickitti`` write it (:func:`prepare_nuscenes`,
:func:`prepare_semantickitti`); everything after reads only it (:func:`load_index`), never the nuScenes devkit,
so data-loader workers stay small and start fast.

Logical content (docs/ARCHITECTURE.md, "Index"): ``format``, ``version``, ``root``, ``scenes``, ``splits`` and
``samples``, one dict per keyframe / scan. nuScenes samples also carry the parts of the devkit's transform chain,
so that projection can repeat the devkit's arithmetic exactly (:mod:`slidr.data.projection`): ``lidar_to_ego``
(the lidar's calibrated sensor) and, per camera, ``ego_pose`` (ego -> global at the camera's time) and
``camera_to_ego`` (its calibrated sensor). ``lidar_to_global`` and each camera's ``lidar_to_camera`` are derived
from them when a sample is read (float64: ``inv(camera_to_ego) @ inv(camera ego_pose) @ ego_pose @
lidar_to_ego``).

Two encodings of the file are read:

- the plain one of the architecture document, ``"samples": [{...}, ...]`` (handy for small hand-written
  indexes; ``lidar_to_camera`` and ``lidar_to_global`` are then taken as given);
- the column encoding that ``slidr prepare`` writes, ``"layout": "columns"``: ``"columns"`` maps each leaf of the
  sample dicts (path joined with ``/``, e.g. ``cameras/CAM_FRONT/image``) to ``{"kind": "array", "dtype",
  "shape", "data": base64 of the little-endian values}``, ``{"kind": "list", "values": [...]}`` or, when few
  values repeat (calibrations, image sizes, scene names), ``{"kind": "table", "table": <array or list>,
  "index": <int32 array>}``; ``"missing"`` lists, per leaf, the samples that lack it. For nuScenes v1.0-trainval
  (34,149 keyframes) this is about 50 MB and loads in well under a second, where the plain encoding is 300+ MB
  and takes ~9 s.

In memory, :class:`DatasetIndex` keeps the columns as numpy arrays (shared copy-on-write by forked workers) and
builds a sample's dict when it is read; matrices come back as read-only float64 arrays.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from slidr.config import NUSCENES_CAMERAS
from slidr.data.io import (NUSCENES_POINT_DIMS, SEMANTICKITTI_POINT_DIMS, read_nuscenes_lidarseg, read_points,
                           read_semantickitti_labels)
from slidr.data.splits import (SEMANTICKITTI_SPLITS, every_kth_scan, every_kth_scene, nuscenes_official_splits,
                               paper_splits, stratified_minival)
from slidr.errors import DataError
from slidr.utils.io import atomic_write_text
from slidr.utils.log import logger
from slidr.utils.progress import progress

FORMATS = ("nuscenes", "semantickitti")
_SEPARATOR = "/"
_MISSING = object()


# --------------------------------------------------------------------------------------------------------------
# The in-memory index.
# --------------------------------------------------------------------------------------------------------------


class SampleList(Sequence):
    """The samples of an index, as a read-only sequence of dicts built on access from compact columns."""

    def __init__(self, columns: dict[str, tuple], missing: dict[str, np.ndarray], size: int):
        self._columns = columns
        self._missing = {path: set(indices.tolist()) for path, indices in missing.items()}
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(self._size))]
        i = int(position)
        if i < 0:
            i += self._size
        if not 0 <= i < self._size:
            raise IndexError(f"sample {position} out of range (the index has {self._size} samples)")
        sample: dict = {}
        for path, column in self._columns.items():
            if i in self._missing.get(path, ()):
                continue
            node = sample
            *parents, leaf = path.split(_SEPARATOR)
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = _column_value(column, i)
        sample.setdefault("cameras", {})  # an empty camera dict has no leaf column
        _add_derived_transforms(sample)
        return sample

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(self._size))

    def column(self, path: str) -> list:
        """All values of one leaf (e.g. ``"scene"`` or ``"token"``) without building the sample dicts."""
        column = self._columns.get(path)
        if column is None:
            raise KeyError(path)
        return [_column_value(column, i) for i in range(self._size)]


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
        label_fraction : 1.0 keeps all; below, nuScenes keeps every k-th scene and SemanticKITTI every k-th
            scan, ``k = round(1 / label_fraction)`` (:mod:`slidr.data.splits`).

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
        if self.format == "semantickitti" and label_fraction < 1.0:
            chosen = every_kth_scan(chosen, label_fraction)
        return np.asarray(chosen, dtype=np.int64)

    def header(self) -> dict:
        """Everything but the samples, as written in the file."""
        return {"format": self.format, "version": self.version, "root": self.root, "scenes": self.scenes,
                "splits": self.splits}


def load_index(path: str | Path) -> DatasetIndex:
    """Load an index file written by ``slidr prepare`` (or a plain hand-written one).

    Raises
    ------
    DataError
        The file is missing, not JSON, or lacks required keys; the message names the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"index file {path} does not exist; create it with `slidr prepare`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"index file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise DataError(f"index file {path} must hold a JSON object")
    for key in ("format", "root", "samples" if data.get("layout") != "columns" else "columns"):
        if key not in data:
            raise DataError(f"index file {path} lacks the key {key!r}")
    if data["format"] not in FORMATS:
        raise DataError(f"index file {path}: unknown format {data['format']!r}; expected one of {FORMATS}")
    root = Path(data["root"])
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    try:
        if data.get("layout") == "columns":
            size = int(data["num_samples"])
            columns = {name: _decode_column(spec) for name, spec in data["columns"].items()}
            missing = {name: np.asarray(indices, dtype=np.int64) for name, indices in data.get("missing", {}).items()}
        else:
            size, columns, missing = _columns_from_samples(data["samples"])
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"index file {path} is malformed: {error!r}") from None
    return DatasetIndex(data["format"], data.get("version", ""), str(root), dict(data.get("scenes", {})),
                        dict(data.get("splits", {})), SampleList(columns, missing, size), path=path)


def write_index(path: str | Path, header: Mapping[str, Any], samples: Sequence[dict]) -> None:
    """Write an index in the column encoding (atomically).

    Parameters
    ----------
    path : the index file to write.
    header : ``format``, ``version``, ``root``, ``scenes``, ``splits``.
    samples : one dict per sample (the logical layout of the module docstring).
    """
    size, columns, missing = _columns_from_samples(samples)
    data = dict(header)
    data.update({
        "layout": "columns",
        "num_samples": size,
        "columns": {name: _encode_column(column) for name, column in columns.items()},
        "missing": {name: indices.tolist() for name, indices in missing.items()},
    })
    atomic_write_text(path, json.dumps(data, separators=(",", ":")))


# --------------------------------------------------------------------------------------------------------------
# Column encoding.
# --------------------------------------------------------------------------------------------------------------


def _flatten(sample: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in sample.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, path + _SEPARATOR)
        else:
            yield path, value


def _is_numeric(value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        return False
    return array.dtype.kind in "iuf" and array.ndim > 0


def _columns_from_samples(samples: Sequence[dict]) -> tuple[int, dict[str, tuple], dict[str, np.ndarray]]:
    """Sample dicts -> in-memory columns ``("array", arr)``, ``("table", table, index)`` or ``("list", values)``."""
    values: dict[str, list] = {}
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise TypeError(f"sample {i} is not an object")
        for path, value in _flatten(sample):
            values.setdefault(path, [_MISSING] * i).append(value)
        for column in values.values():
            if len(column) <= i:
                column.append(_MISSING)
    size = len(samples)
    columns, missing = {}, {}
    for path, column in values.items():
        absent = [i for i, value in enumerate(column) if value is _MISSING]
        if absent:
            missing[path] = np.asarray(absent, dtype=np.int64)
        present = [value for value in column if value is not _MISSING]
        columns[path] = _build_column(column, present)
    return size, columns, missing


def _build_column(column: list, present: list) -> tuple:
    if present and all(_is_numeric(value) for value in present):
        arrays = [np.asarray(value) for value in present]
        if len({array.shape for array in arrays}) == 1:
            integer = all(array.dtype.kind in "iu" for array in arrays)
            dtype = np.int64 if integer else np.float64
            filler = np.zeros(arrays[0].shape, dtype=dtype)
            stacked = np.stack([filler if value is _MISSING else np.asarray(value, dtype=dtype) for value in column])
            flat = stacked.reshape(len(column), -1)
            table, index = np.unique(flat, axis=0, return_inverse=True)
            if len(table) * 2 <= len(column):
                return ("table", table.reshape((-1,) + stacked.shape[1:]), index.reshape(-1).astype(np.int32))
            return ("array", stacked)
    filled = [None if value is _MISSING else value for value in column]
    lookup: dict = {}
    table: list = []
    index = []
    for value in filled:
        scalar = isinstance(value, (str, int, float, bool, type(None)))
        key = (type(value).__name__, value) if scalar else ("json", json.dumps(value, sort_keys=True))
        position = lookup.get(key)
        if position is None:
            position = lookup[key] = len(table)
            table.append(value)
        index.append(position)
    if len(table) * 2 <= len(filled):
        return ("table", table, np.asarray(index, dtype=np.int32))
    return ("list", filled)


def _column_value(column: tuple, i: int) -> Any:
    kind = column[0]
    if kind == "array":
        return _public(column[1][i])
    if kind == "table":
        return _public(column[1][column[2][i]])
    return column[1][i]


def _public(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return value.item()
        value = value.view()
        value.flags.writeable = False
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _encode_array(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {"kind": "array", "dtype": array.dtype.name, "shape": list(array.shape),
            "data": base64.b64encode(little.tobytes()).decode("ascii")}


def _decode_array(spec: dict) -> np.ndarray:
    dtype = np.dtype(spec["dtype"]).newbyteorder("<")
    array = np.frombuffer(base64.b64decode(spec["data"]), dtype=dtype).reshape(spec["shape"])
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _encode_column(column: tuple) -> dict:
    kind = column[0]
    if kind == "array":
        return _encode_array(column[1])
    if kind == "table":
        table = _encode_array(column[1]) if isinstance(column[1], np.ndarray) else column[1]
        return {"kind": "table", "table": table, "index": _encode_array(column[2])}
    return {"kind": "list", "values": column[1]}


def _decode_column(spec: dict) -> tuple:
    kind = spec["kind"]
    if kind == "array":
        return ("array", _decode_array(spec))
    if kind == "table":
        table = spec["table"]
        table = _decode_array(table) if isinstance(table, dict) else table
        return ("table", table, _decode_array(spec["index"]))
    if kind == "list":
        return ("list", spec["values"])
    raise ValueError(f"unknown column kind {kind!r}")


# --------------------------------------------------------------------------------------------------------------
# Transforms.
# --------------------------------------------------------------------------------------------------------------


def rigid_transform(rotation: np.ndarray, translation: Sequence[float]) -> np.ndarray:
    """(4, 4) float64 matrix of a rotation (3, 3) and a translation (3,)."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = translation
    return matrix


def invert_rigid(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (4, 4) rigid transform: ``[R^T, -R^T t]``."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rotation_t = matrix[:3, :3].T
    return rigid_transform(rotation_t, -rotation_t @ matrix[:3, 3])


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


def _quaternion_transform(record: dict) -> np.ndarray:
    """(4, 4) transform of a devkit ``calibrated_sensor`` / ``ego_pose`` record, with the devkit's rotation matrix."""
    from pyquaternion import Quaternion

    return rigid_transform(Quaternion(record["rotation"]).rotation_matrix, np.asarray(record["translation"], float))


# --------------------------------------------------------------------------------------------------------------
# nuScenes.
# --------------------------------------------------------------------------------------------------------------


def _read_table(folder: Path, name: str, required: bool = True) -> list:
    path = folder / f"{name}.json"
    if not path.is_file():
        if required:
            raise DataError(f"nuScenes table {path} does not exist")
        return []
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"nuScenes table {path} is not valid JSON: {error}") from None


def _stream_table(folder: Path, name: str, chunk_size: int = 1 << 22) -> Iterator[dict]:
    """Records of a JSON array file, one at a time (sample_data / ego_pose of v1.0-trainval are gigabytes)."""
    path = folder / f"{name}.json"
    decoder = json.JSONDecoder()
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"nuScenes table {path} does not exist") from None
    with handle:
        buffer = handle.read(chunk_size).lstrip()
        if not buffer.startswith("["):
            raise DataError(f"nuScenes table {path} is not a JSON array")
        buffer = buffer[1:]
        while True:
            buffer = buffer.lstrip().lstrip(",").lstrip()
            if buffer.startswith("]"):
                return
            try:
                record, end = decoder.raw_decode(buffer)
            except json.JSONDecodeError:
                more = handle.read(chunk_size)
                if not more:
                    raise DataError(f"nuScenes table {path} is truncated or not valid JSON") from None
                buffer += more
                continue
            yield record
            buffer = buffer[end:]


def prepare_nuscenes(dataroot: str | Path, version: str, out: str | Path, splits: str = "auto") -> DatasetIndex:
    """Index the keyframes of a nuScenes dataroot (devkit layout) and write the index to ``out``.

    Reads only the tables it needs; the two big ones (``sample_data``, ``ego_pose``) are streamed record by
    record, so v1.0-trainval is indexed without loading the devkit's whole database. Transforms use the
    devkit's rotation matrices (pyquaternion), so projections can repeat its arithmetic exactly.

    Parameters
    ----------
    dataroot : folder holding ``<version>/*.json``, ``samples/`` and, if labelled, ``lidarseg/``.
    version : ``v1.0-mini``, ``v1.0-trainval``, ``v1.0-test``, or the synthetic world's version.
    out : the index file to write.
    splits : ``"official"`` (the devkit's lists and the paper's split), ``"stratified"`` (generated by
        :func:`nuscenes_splits`), or ``"auto"``: stratified for the synthetic world (its dataroot holds
        ``synth_summary.json``; its scene names reuse official ones) and for scenes the devkit does not know,
        else official.

    Returns
    -------
    The written index, loaded.
    """
    if splits not in ("auto", "official", "stratified"):
        raise DataError(f"splits must be 'auto', 'official' or 'stratified', got {splits!r}")
    dataroot = Path(dataroot).resolve()
    tables = dataroot / version
    if not tables.is_dir():
        raise DataError(f"nuScenes dataroot {dataroot} has no {version}/ table folder")
    scene_table = _read_table(tables, "scene")
    logs = {record["token"]: record for record in _read_table(tables, "log")}
    sensors = {record["token"]: record for record in _read_table(tables, "sensor")}
    calibrations = {record["token"]: record for record in _read_table(tables, "calibrated_sensor")}
    sample_table = _read_table(tables, "sample")
    lidarseg = {record["sample_data_token"]: record["filename"]
                for record in _read_table(tables, "lidarseg", required=False)}

    wanted_channels = set(NUSCENES_CAMERAS) | {"LIDAR_TOP"}
    keyframe_data: dict[str, dict[str, dict]] = {}
    for record in progress(_stream_table(tables, "sample_data"), desc="sample_data", unit="rec"):
        if not record.get("is_key_frame"):
            continue
        calibration = calibrations.get(record["calibrated_sensor_token"])
        if calibration is None:
            raise DataError(f"{tables}/sample_data.json: record {record['token']} refers to a missing "
                            f"calibrated_sensor {record['calibrated_sensor_token']}")
        channel = sensors[calibration["sensor_token"]]["channel"]
        if channel in wanted_channels:
            keyframe_data.setdefault(record["sample_token"], {})[channel] = record
    needed_poses = {record["ego_pose_token"] for by_channel in keyframe_data.values() for record in by_channel.values()}
    poses = {record["token"]: _quaternion_transform(record)
             for record in progress(_stream_table(tables, "ego_pose"), desc="ego_pose", unit="rec")
             if record["token"] in needed_poses}
    calibration_transforms = {token: _quaternion_transform(record) for token, record in calibrations.items()}

    scene_names = {record["token"]: record["name"] for record in scene_table}
    scene_rank = {record["token"]: position for position, record in enumerate(scene_table)}
    scenes = {}
    for record in scene_table:
        log = logs.get(record["log_token"], {})
        scenes[record["name"]] = {"description": record.get("description", ""), "location": log.get("location", ""),
                                  "log": log.get("logfile", "")}

    samples = []
    skipped = 0
    for sample in sorted(sample_table, key=lambda s: (scene_rank.get(s["scene_token"], -1), s["timestamp"])):
        by_channel = keyframe_data.get(sample["token"], {})
        lidar = by_channel.get("LIDAR_TOP")
        if lidar is None or sample["scene_token"] not in scene_names:
            skipped += 1
            continue
        label_file = lidarseg.get(lidar["token"])
        entry = {
            "token": sample["token"],
            "scene": scene_names[sample["scene_token"]],
            "timestamp": int(sample["timestamp"]),
            "lidar": lidar["filename"],
            "lidarseg": label_file,
            "ego_pose": poses[lidar["ego_pose_token"]],
            "lidar_to_ego": calibration_transforms[lidar["calibrated_sensor_token"]],
            "cameras": {},
        }
        for channel in NUSCENES_CAMERAS:
            camera = by_channel.get(channel)
            if camera is None:
                continue
            calibration = calibrations[camera["calibrated_sensor_token"]]
            entry["cameras"][channel] = {
                "image": camera["filename"],
                "width": int(camera["width"]),
                "height": int(camera["height"]),
                "intrinsic": np.asarray(calibration["camera_intrinsic"], dtype=np.float64),
                "ego_pose": poses[camera["ego_pose_token"]],
                "camera_to_ego": calibration_transforms[camera["calibrated_sensor_token"]],
            }
        samples.append(entry)
    if skipped:
        logger.warning("prepare nuscenes: skipped %d samples without a LIDAR_TOP keyframe or scene", skipped)
    if not samples:
        raise DataError(f"nuScenes dataroot {dataroot} ({version}) has no keyframe with a LIDAR_TOP scan")

    header = {"format": "nuscenes", "version": version, "root": str(dataroot), "scenes": scenes,
              "splits": nuscenes_splits(version, scenes, official=_use_official_splits(splits, dataroot, scenes))}
    write_index(out, header, samples)
    logger.info("prepare nuscenes: %d keyframes of %d scenes (%d labelled) -> %s", len(samples),
                len({s["scene"] for s in samples}),
                sum(s["lidarseg"] is not None for s in samples), out)
    return load_index(out)


def _use_official_splits(choice: str, dataroot: Path, scenes: Mapping) -> bool:
    if choice != "auto":
        return choice == "official"
    from slidr.data.synth.generate import SUMMARY_FILE

    if (dataroot / SUMMARY_FILE).is_file():
        return False
    known = {name for version in ("v1.0-trainval", "v1.0-test")
             for members in nuscenes_official_splits(version).values() for name in members}
    return all(name in known for name in scenes)


def nuscenes_splits(version: str, scenes: Mapping[str, Mapping[str, str]],
                    official: bool = True) -> dict[str, list[str]]:
    """Splits of the indexed scenes, each in scene order.

    ``official``: the devkit's splits of ``version`` and, from the training scenes, the paper's
    ``parametrizing`` / ``verifying`` split. Otherwise (the synthetic world) a generated ``val`` (150/850 of the
    scenes) and ``verifying`` (100/700 of the remaining ``train`` scenes), both drawn by
    :func:`~slidr.data.splits.stratified_minival` with the proportions of rain, night and city.
    """
    names = list(scenes)
    if official:
        splits = {split: [name for name in names if name in set(members)]
                  for split, members in nuscenes_official_splits(version).items()}
        if "train" in splits:
            splits.update(paper_splits(splits["train"]))
        return splits
    val = set(stratified_minival(scenes, names, round(len(names) * 150 / 850) if len(names) > 1 else 0))
    train = [name for name in names if name not in val]
    verifying = stratified_minival(scenes, train, round(len(train) * 100 / 700) if len(train) > 1 else 0)
    return {"train": train, "val": [name for name in names if name in val], **paper_splits(train, verifying)}


# --------------------------------------------------------------------------------------------------------------
# SemanticKITTI.
# --------------------------------------------------------------------------------------------------------------


def _read_kitti_calibration(path: Path) -> dict[str, np.ndarray]:
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, numbers = line.partition(":")
        try:
            values[key.strip()] = np.array([float(x) for x in numbers.split()], dtype=np.float64)
        except ValueError:
            raise DataError(f"calibration file {path} line {number}: not a list of numbers") from None
    for key in ("P2", "Tr"):
        if key in values and values[key].size != 12:
            raise DataError(f"calibration file {path}: {key} has {values[key].size} numbers, expected 12")
    return values


def _read_kitti_poses(path: Path, count: int) -> np.ndarray:
    try:
        poses = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise DataError(f"poses file {path} is malformed: {error}") from None
    if poses.shape != (count, 12):
        raise DataError(f"poses file {path} has {poses.shape[0]} poses of {poses.shape[1]} numbers; "
                        f"expected {count} poses (one per scan) of 12")
    matrices = np.tile(np.eye(4), (count, 1, 1))
    matrices[:, :3, :] = poses.reshape(count, 3, 4)
    return matrices


def _kitti_sequences_folder(root: Path) -> Path:
    if (root / "sequences").is_dir():
        return root / "sequences"
    if any(child.is_dir() and child.name.isdigit() for child in root.iterdir()):
        return root
    raise DataError(f"SemanticKITTI root {root} has no sequences/ folder")


def prepare_semantickitti(root: str | Path, out: str | Path) -> DatasetIndex:
    """Index SemanticKITTI sequences (scans, labels, calibration, poses, left colour images) and write ``out``.

    Layout: ``<root>/sequences/<NN>/velodyne/<frame>.bin``, optional ``labels/<frame>.label``, ``calib.txt``
    (``P2``, ``Tr``), ``poses.txt`` and ``image_2/<frame>.png``. ``lidar_to_global`` = ``inv(Tr) @ pose @ Tr``
    (the pose is camera 0's) where poses and calibration exist; ``image_2`` is indexed where the image and ``P2``
    exist, with ``lidar_to_camera`` = the P2 baseline offset composed with ``Tr``.

    Parameters
    ----------
    root : the dataset folder (holding ``sequences/``) or the ``sequences`` folder itself.
    out : the index file to write.
    """
    from PIL import Image

    root = Path(root).resolve()
    sequences_folder = _kitti_sequences_folder(root)
    samples, scenes = [], {}
    for folder in sorted(p for p in sequences_folder.iterdir() if p.is_dir() and p.name.isdigit()):
        scans = sorted((folder / "velodyne").glob("*.bin"))
        if not scans:
            continue
        sequence = folder.name
        scenes[sequence] = {"description": "", "location": "karlsruhe", "log": sequence}
        calibration = _read_kitti_calibration(folder / "calib.txt") if (folder / "calib.txt").is_file() else {}
        lidar_to_cam0 = rigid_transform(np.eye(3), np.zeros(3))
        if "Tr" in calibration:
            lidar_to_cam0[:3, :] = calibration["Tr"].reshape(3, 4)
        poses = _read_kitti_poses(folder / "poses.txt", len(scans)) if (folder / "poses.txt").is_file() else None
        image_size = None
        for position, scan in enumerate(scans):
            frame = scan.stem
            labels = folder / "labels" / f"{frame}.label"
            entry: dict = {
                "token": f"{sequence}/{frame}",
                "scene": sequence,
                "frame": frame,
                "lidar": str(scan.relative_to(root)),
                "labels": str(labels.relative_to(root)) if labels.is_file() else None,
                "cameras": {},
            }
            if poses is not None and "Tr" in calibration:
                entry["lidar_to_global"] = invert_rigid(lidar_to_cam0) @ poses[position] @ lidar_to_cam0
            image = folder / "image_2" / f"{frame}.png"
            if "P2" in calibration and image.is_file():
                if image_size is None:
                    with Image.open(image) as opened:
                        image_size = opened.size
                projection = calibration["P2"].reshape(3, 4)
                intrinsic = projection[:, :3]
                offset = rigid_transform(np.eye(3), np.linalg.solve(intrinsic, projection[:, 3]))
                entry["cameras"]["image_2"] = {
                    "image": str(image.relative_to(root)),
                    "width": int(image_size[0]),
                    "height": int(image_size[1]),
                    "intrinsic": intrinsic,
                    "lidar_to_camera": offset @ lidar_to_cam0,
                }
            samples.append(entry)
    if not samples:
        raise DataError(f"SemanticKITTI root {root} has no scans (sequences/NN/velodyne/*.bin)")
    splits = {split: [name for name in members if name in scenes] for split, members in SEMANTICKITTI_SPLITS.items()}
    header = {"format": "semantickitti", "version": "semantickitti", "root": str(root), "scenes": scenes,
              "splits": splits}
    write_index(out, header, samples)
    logger.info("prepare semantickitti: %d scans of %d sequences (%d labelled) -> %s", len(samples), len(scenes),
                sum(s["labels"] is not None for s in samples), out)
    return load_index(out)


class Scan(NamedTuple):
    """One sample's point cloud as read by :func:`load_scan`.

    Attributes
    ----------
    points : (N, 4) float32 x, y, z, intensity (raw: nuScenes 0..255, SemanticKITTI 0..1), finite points only.
    labels : (N,) int64 evaluation indices (0 = ignore), or None when the sample is unlabelled.
    num_dropped : points of the file dropped for NaN or infinite values.
    """

    points: np.ndarray
    labels: Optional[np.ndarray]
    num_dropped: int


def load_scan(index: DatasetIndex, sample: dict, with_labels: bool = True) -> Scan:
    """Read a sample's points and (if labelled and asked for) labels, dropping non-finite points from both.

    Raises
    ------
    DataError
        A truncated point file, or a label file whose length differs from the scan (each message names the file).
    """
    nuscenes = index.format == "nuscenes"
    lidar = index.resolve(sample["lidar"])
    read = read_points(lidar, NUSCENES_POINT_DIMS if nuscenes else SEMANTICKITTI_POINT_DIMS)
    labels = None
    label_file = sample.get("lidarseg" if nuscenes else "labels")
    if with_labels and label_file:
        reader = read_nuscenes_lidarseg if nuscenes else read_semantickitti_labels
        labels = reader(index.resolve(label_file), read.kept.size)
        if read.num_dropped:
            labels = labels[read.kept]
    if read.num_dropped:
        logger.debug("%s: dropped %d points with NaN or infinite values", lidar, read.num_dropped)
    return Scan(np.ascontiguousarray(read.points[:, :4]), labels, read.num_dropped)
