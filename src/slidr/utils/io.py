"""Atomic writes: a crash or a full disk never leaves a half-written file (or dataset) that looks complete.

A write that fails (full disk, read-only file system, no permission, a folder that cannot be created) raises
:class:`slidr.errors.WriteError` naming the file, never a raw ``OSError``. :func:`check_output` refuses, before
any work, an output path that cannot be written (``slidr`` checks every command's outputs with it).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Literal

from slidr.errors import UsageError, WriteError


def write_error(path: str | Path, error: OSError, what: str = "") -> WriteError:
    """The :class:`WriteError` saying that ``path`` could not be written because of ``error``."""
    reason = error.strerror or str(error)
    return WriteError(f"cannot write {what + ' ' if what else ''}{path}: {reason}", path=str(path), reason=reason)


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    An ``OSError`` while creating the folder, writing or renaming becomes a :class:`WriteError` naming ``path``
    (``what`` describes it: "checkpoint", "index"); an existing file at ``path`` is then left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as error:
        raise write_error(path, error, what) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as error:
        raise write_error(path, error, what) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_figure(figure: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib ``figure`` as a PNG at ``path`` atomically (:func:`atomic_path`) and close it; returns
    ``path``. ``savefig_kwargs`` go to ``figure.savefig`` (e.g. ``bbox_inches="tight"``)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", **savefig_kwargs)
    finally:
        plt.close(figure)
    return path

def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def check_output(path: str | Path, kind: Literal["folder", "file"], option: str) -> Path:
    """Refuse, before any work, an output that cannot be created or written; returns ``path``.

    A folder output may exist (as a folder) or be creatable; a file output may exist (as a file) or be creatable
    in its folder. The nearest existing folder on the way must accept a new file (a real write is tried, so
    read-only file systems and permissions are both caught). Nothing is created.

    Raises
    ------
    UsageError
        Naming ``option`` and the path: it is a file where a folder is needed (or the reverse), it lies under a
        file, or its folder cannot be written.
    """
    path = Path(path).expanduser()
    if path.exists():
        if kind == "folder" and not path.is_dir():
            raise UsageError(f"{option} {path}: exists and is not a folder")
        if kind == "file" and path.is_dir():
            raise UsageError(f"{option} {path}: is a folder; give a file name")
    folder = path if kind == "folder" else path.absolute().parent
    folder = folder.absolute()
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".slidr-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot write in {folder} ({error.strerror or error})") from None
    return path


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
