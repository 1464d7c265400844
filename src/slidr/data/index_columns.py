"""The samples of an index as columns: built from sample dicts, kept as numpy arrays, stored in an ``.npz``.

Each leaf of the sample dicts (its path joined with ``/``, e.g. ``cameras/CAM_FRONT/image``) is one column,
held in one of four forms:

- :class:`NumericColumn`: numbers or numeric arrays of one shape, stacked into an (N, ...) int64 / float64 array;
- :class:`RaggedColumn`: numeric arrays whose first dimension varies (e.g. a sample's (K, 7) boxes),
  concatenated, with (N + 1,) offsets;
- :class:`TextColumn`: strings or ``None``, as one UTF-8 buffer with (N + 1,) offsets;
- :class:`JsonColumn`: anything else JSON can hold (booleans, lists of names, mixed values), one JSON text each.

A column whose values mostly repeat (calibrations, image sizes, scene names) is stored once per distinct value
with an (N,) int32 index (:class:`TabledColumn`). Samples that lack a leaf are marked in a (N,) bool ``present``
mask. Everything is numpy arrays and bytes, so data-loader workers forked from the process share the index
copy-on-write: reading a value touches no per-sample Python object (a list of N strings would be copied page by
page as the workers' reference counts change).

The file (:func:`write_columns` / :func:`read_columns`) is an uncompressed ``.npz``: a ``header`` member holds
the JSON header (the index's header plus ``slidr_index`` = :data:`CONTAINER_VERSION`, ``num_samples`` and one
entry per column: ``path``, ``kind``, ``tabled``, ``missing``), and members ``c<j>.<part>`` hold column j's
arrays. ``numpy.load`` opens it; nothing is pickled.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO, Iterator, Mapping, Optional, Sequence, cast

import numpy as np

SEPARATOR = "/"
CONTAINER_VERSION = 1
_MISSING = object()


# --------------------------------------------------------------------------------------------------------------
# Column forms.
# --------------------------------------------------------------------------------------------------------------


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _public(value: Any) -> Any:
    """A stored value as samples show it: Python scalars, read-only array views."""
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return value.item()
        value = value.view()
        value.flags.writeable = False
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


class NumericColumn:
    """Numbers or same-shape numeric arrays: ``values`` (N, ...) int64 or float64."""

    kind = "numeric"

    def __init__(self, values: np.ndarray):
        self.values = _read_only(values)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> Any:
        return _public(self.values[i])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.values}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> NumericColumn:
        return cls(arrays["values"])


class RaggedColumn:
    """Numeric arrays of varying length: item i is ``values[offsets[i]:offsets[i + 1]]`` (K_i, ...)."""

    kind = "ragged"

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values = _read_only(values)
        self.offsets = _read_only(offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return _public(self.values[self.offsets[i]:self.offsets[i + 1]])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.values, "offsets": self.offsets}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> RaggedColumn:
        return cls(arrays["values"], arrays["offsets"])


class TextColumn:
    """Strings or ``None``: item i is ``data[offsets[i]:offsets[i + 1]]`` (bytes) decoded as UTF-8, ``None``
    where ``null[i]`` (``null`` is absent when no item is ``None``)."""

    kind = "text"

    def __init__(self, data: np.ndarray | bytes, offsets: np.ndarray, null: Optional[np.ndarray] = None):
        self.data = data if isinstance(data, bytes) else data.tobytes()  # slicing bytes is the fastest way to a str
        self.offsets = _read_only(offsets)
        self.null = None if null is None else _read_only(null)

    @classmethod
    def from_values(cls, values: Sequence[Optional[str]]) -> TextColumn:
        encoded = [b"" if value is None else value.encode() for value in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in encoded], out=offsets[1:])
        null = np.array([value is None for value in values], dtype=bool)
        return cls(b"".join(encoded), offsets, null if null.any() else None)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Optional[str]:
        if self.null is not None and self.null[i]:
            return None
        return self.data[self.offsets[i]:self.offsets[i + 1]].decode()

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"data": np.frombuffer(self.data, dtype=np.uint8), "offsets": self.offsets}
        if self.null is not None:
            arrays["null"] = self.null
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> TextColumn:
        return cls(arrays["data"], arrays["offsets"], arrays.get("null"))


class JsonColumn(TextColumn):
    """Any JSON value, one JSON text per item (decoded on access: every read gets its own lists)."""

    kind = "json"

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> JsonColumn:
        texts = [_json_text(value) for value in values]
        text_column = TextColumn.from_values(texts)
        return cls(text_column.data, text_column.offsets)

    def __getitem__(self, i: int) -> Any:
        return json.loads(cast(str, super().__getitem__(i)))  # JSON texts are never null


class TabledColumn:
    """A column of distinct values (any form above) and an (N,) int32 ``index`` into it."""

    def __init__(self, table: Column, index: np.ndarray):
        self.table = table
        self.index = _read_only(index)
        self.kind: str = table.kind

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.table[int(self.index[i])]

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.table.arrays(), "index": self.index}


Column = NumericColumn | RaggedColumn | TextColumn | JsonColumn | TabledColumn
_FORMS = {form.kind: form for form in (NumericColumn, RaggedColumn, TextColumn, JsonColumn)}


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} values cannot be stored in an index")


# --------------------------------------------------------------------------------------------------------------
# Sample dicts -> columns.
# --------------------------------------------------------------------------------------------------------------


class Columns:
    """The samples of an index as columns (see the module docstring).

    Attributes
    ----------
    size : number of samples N.
    columns : leaf path -> column, in the order leaves first appear in the samples.
    present : leaf path -> (N,) bool, for the leaves that some samples lack.
    """

    def __init__(self, size: int, columns: dict[str, Column], present: dict[str, np.ndarray]):
        self.size = size
        self.columns = columns
        self.present = {path: _read_only(mask) for path, mask in present.items()}

    @classmethod
    def from_samples(cls, samples: Sequence[Mapping]) -> Columns:
        """Columns of sample dicts (nested dicts; leaves are numbers, arrays, strings, None or JSON values).

        Raises
        ------
        TypeError
            A sample is not a dict, or a value is neither numeric nor JSON (e.g. an object).
        """
        values: dict[str, list] = {}
        for i, sample in enumerate(samples):
            if not isinstance(sample, dict):
                raise TypeError(f"sample {i} is not an object")
            for path, value in _flatten(sample):
                column = values.get(path)
                if column is None:  # a leaf first seen here: the samples before lack it
                    column = values[path] = [_MISSING] * i
                column.append(value)
            for column in values.values():
                if len(column) <= i:
                    column.append(_MISSING)
        columns, present = {}, {}
        for path, column in values.items():
            mask = np.array([value is not _MISSING for value in column], dtype=bool)
            if not mask.all():
                present[path] = mask
            columns[path] = _build_column(column)
        return cls(len(samples), columns, present)

    def value(self, path: str, i: int) -> Any:
        """Sample i's value of leaf ``path``, or ``_MISSING`` where the sample lacks it."""
        mask = self.present.get(path)
        if mask is not None and not mask[i]:
            return _MISSING
        return self.columns[path][i]

    def values(self, path: str) -> list:
        """Every sample's value of leaf ``path`` (``None`` where a sample lacks it)."""
        column = self.columns[path]
        if isinstance(column, TabledColumn) and not isinstance(column.table, JsonColumn):
            distinct = [column.table[j] for j in range(len(column.table))]  # immutable: decoded once, shared
            values = [distinct[j] for j in column.index.tolist()]
        else:
            values = [column[i] for i in range(self.size)]
        mask = self.present.get(path)
        if mask is not None:
            values = [value if present else None for value, present in zip(values, mask.tolist())]
        return values


def is_missing(value: Any) -> bool:
    """Whether :meth:`Columns.value` found no value."""
    return value is _MISSING


def _flatten(sample: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in sample.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, path + SEPARATOR)
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


def _build_column(column: list) -> Column:
    """One column of values (``_MISSING`` where a sample lacks the leaf), in its most compact form."""
    present = [value for value in column if value is not _MISSING]
    if present and all(_is_numeric(value) for value in present):
        arrays = [np.asarray(value) for value in present]
        dtype = np.int64 if all(array.dtype.kind in "iu" for array in arrays) else np.float64
        shapes = {array.shape for array in arrays}
        if len(shapes) == 1:
            filler = np.zeros(arrays[0].shape, dtype=dtype)
            stacked = np.stack([filler if value is _MISSING else np.asarray(value, dtype=dtype) for value in column])
            flat = stacked.reshape(len(column), -1)
            table, index = np.unique(flat, axis=0, return_inverse=True)
            if len(table) * 2 <= len(column):
                return TabledColumn(NumericColumn(table.reshape((-1,) + stacked.shape[1:])),
                                    index.reshape(-1).astype(np.int32))
            return NumericColumn(stacked)
        # arrays of varying length: an empty one ([] in a JSON file) takes the others' trailing shape
        trailing_shapes = {shape[1:] for shape in shapes if len(shape) > 0 and shape[0] > 0}
        if len(trailing_shapes) <= 1 and all(len(shape) > 0 for shape in shapes):
            trailing = trailing_shapes.pop() if trailing_shapes else arrays[0].shape[1:]
            parts = [np.zeros((0,) + trailing, dtype) if value is _MISSING
                     else np.asarray(value, dtype=dtype).reshape((-1,) + trailing) for value in column]
            offsets = np.zeros(len(parts) + 1, dtype=np.int64)
            np.cumsum([len(part) for part in parts], out=offsets[1:])
            return RaggedColumn(np.concatenate(parts), offsets)
    filled = [None if value is _MISSING else value for value in column]
    text = all(value is None or isinstance(value, str) for value in filled)
    keys = filled if text else [_json_text(value) for value in filled]
    lookup: dict = {}
    distinct: list = []
    index = []
    for key, value in zip(keys, filled):
        position = lookup.get(key)
        if position is None:
            position = lookup[key] = len(distinct)
            distinct.append(value)
        index.append(position)
    form = TextColumn if text else JsonColumn
    if len(distinct) * 2 <= len(filled):
        return TabledColumn(form.from_values(distinct), np.asarray(index, dtype=np.int32))
    return form.from_values(filled)


# --------------------------------------------------------------------------------------------------------------
# The file.
# --------------------------------------------------------------------------------------------------------------

ZIP_MAGIC = b"PK\x03\x04"
HEADER_MEMBER = "header"


def write_columns(handle: BinaryIO, header: Mapping[str, Any], columns: Columns) -> None:
    """Write the header and the columns as an uncompressed ``.npz`` into an open binary file.

    Parameters
    ----------
    handle : the file, opened for writing in binary mode.
    header : JSON-serialisable fields (``format``, ``version``, ``root``, ``scenes``, ``splits``, ...).
    columns : the samples' columns.
    """
    entries = []
    members: dict[str, np.ndarray] = {}
    for j, (path, column) in enumerate(columns.columns.items()):
        entries.append({"path": path, "kind": column.kind, "tabled": isinstance(column, TabledColumn),
                        "missing": path in columns.present})
        for part, array in column.arrays().items():
            members[f"c{j}.{part}"] = array
        if path in columns.present:
            members[f"c{j}.present"] = columns.present[path]
    document = {**header, "slidr_index": CONTAINER_VERSION, "num_samples": columns.size, "columns": entries}
    text = json.dumps(document, separators=(",", ":"), default=_json_default)
    np.savez(handle, **{HEADER_MEMBER: np.frombuffer(text.encode(), dtype=np.uint8)}, **members)


def read_columns(source: Any) -> tuple[dict[str, Any], Columns]:
    """Read a file written by :func:`write_columns`.

    Parameters
    ----------
    source : its path or an open binary file.

    Returns
    -------
    The header (with ``slidr_index``, ``num_samples`` and ``columns`` removed) and the columns.

    Raises
    ------
    ValueError, KeyError, OSError
        Not such a file, or a damaged one (callers turn these into one-line errors naming the file).
    """
    with np.load(source, allow_pickle=False) as members:
        if HEADER_MEMBER not in members.files:
            raise ValueError("it has no 'header' member: not a slidr index")
        header = json.loads(members[HEADER_MEMBER].tobytes().decode())
        if not isinstance(header, dict) or "slidr_index" not in header:
            raise ValueError("its header is not a slidr index header")
        if header["slidr_index"] != CONTAINER_VERSION:
            raise ValueError(f"it is version {header['slidr_index']} of the index file; this slidr reads "
                             f"version {CONTAINER_VERSION}")
        size = int(header.pop("num_samples"))
        header.pop("slidr_index")
        arrays_of: dict[int, dict[str, np.ndarray]] = {}
        for name in members.files:
            if name != HEADER_MEMBER:
                number, _, part = name.partition(".")
                arrays_of.setdefault(int(number[1:]), {})[part] = members[name]
    columns: dict[str, Column] = {}
    present: dict[str, np.ndarray] = {}
    for j, entry in enumerate(header.pop("columns")):
        arrays = arrays_of.get(j, {})
        column: Column = _FORMS[entry["kind"]].from_arrays(arrays)
        if entry["tabled"]:
            index = arrays["index"]
            if index.size and not 0 <= index.min() <= index.max() < len(column):
                raise ValueError(f"column {entry['path']!r} refers to values it does not hold")
            column = TabledColumn(column, index)
        if len(column) != size:
            raise ValueError(f"column {entry['path']!r} has {len(column)} values for {size} samples")
        columns[entry["path"]] = column
        if entry["missing"]:
            present[entry["path"]] = arrays["present"]
    return header, Columns(size, columns, present)
