"""Checkpoints: atomic epoch checkpoints for resuming, the exported pretrained file, and loading a backbone.

Training checkpoints (``DIR/checkpoints/epoch=NNNN.ckpt``) are Lightning checkpoints: weights, optimizer,
scheduler, loop counters (epoch, step) and callback state. Every write goes to a temporary file that is then
renamed, so a run killed while writing never leaves a truncated checkpoint that looks complete. Because the
data order depends only on (seed, epoch) (see :class:`slidr.engine.data.EpochSampler`), resuming from the
checkpoint of epoch ``e`` replays epochs ``e+1...`` exactly; a run killed mid-epoch loses at most that epoch.

The exported file (``DIR/pretrained.pt``) is a plain ``torch.save`` of a dict: ``model_points`` (3D network
state dict), ``model_images_head`` (image head state dict, empty for methods without one), ``config`` (the
resolved config as a dict), ``method``, ``slidr_version``, and ``model_images_encoder`` when the image teacher was
randomly initialised (it cannot be rebuilt from a weights file then). It holds tensors and plain data only, so
:func:`load_export` reads it with ``weights_only=True``: a file that needs arbitrary unpickling (which can run
code) is refused.
"""

from __future__ import annotations

import datetime
import json
import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Optional

import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from slidr import __version__
from slidr.config import (
    PretrainConfig,
    VoxelConfig,
    dump_config,
    exported_pretrain_config,
    save_config,
    to_dict,
)
from slidr.errors import ConfigError, SlidrError, UsageError, WriteError
from slidr.models.state_dict import state_dict_problems
from slidr.utils.io import atomic_path, write_json
from slidr.utils.log import logger

CHECKPOINT_DIR = "checkpoints"
EXPORT_NAME = "pretrained.pt"
DOWNSTREAM_MODEL_NAME = "model.pt"
CONFIG_NAME = "config.yaml"
RESUME_CHANGES_NAME = "resume_changes.json"
DOWNSTREAM_MODES = ("probe", "finetune")
_EPOCH_FILE = re.compile(r"^epoch=(\d+)\.ckpt$")


class ResumeConflict(ConfigError):
    """Resuming a run with settings that differ from its ``config.yaml``; ``changes`` maps each dotted key to its
    ``(run, now)`` values."""

    def __init__(self, message: str, changes: Optional[Mapping[str, tuple[Any, Any]]] = None) -> None:
        super().__init__(message, key=next(iter(changes)) if changes else None)
        self.changes = dict(changes or {})


class _RecordingWriter:
    """A binary file for ``torch.save`` that keeps the ``OSError`` of a failed write: torch reports a full disk as
    a ``RuntimeError`` without the reason ("unexpected pos ..."), the file system's own error says it."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: Optional[OSError] = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_atomic(obj: Any, path: str | Path, what: str = "") -> None:
    """``torch.save(obj)`` to a temporary file beside ``path``, then rename it onto ``path``.

    Raises
    ------
    WriteError
        The file could not be written (full disk, read-only folder, ...): named, with the system's reason; an
        existing file at ``path`` is left as it was.
    """
    with atomic_path(path, what) as tmp, open(tmp, "wb") as handle:
        writer = _RecordingWriter(handle)
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None  # atomic_path names the file with the system's reason
            raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer that writes a temporary file and renames it (never a partial checkpoint).

    A failed write says which checkpoint could not be written and which earlier one is intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        try:
            save_atomic(checkpoint, path, "checkpoint")
        except WriteError as error:
            previous = [p for p in epoch_checkpoints(Path(path).parent) if p != Path(path)]
            kept = (f"the previous checkpoint {previous[-1]} is intact (continue from it with --resume once there "
                    "is room)") if previous else "no earlier checkpoint exists"
            raise WriteError(f"{error}; {kept}", path=error.path, reason=error.reason) from None


def epoch_checkpoints(directory: str | Path) -> list[Path]:
    """The epoch checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in directory.iterdir() if (m := _EPOCH_FILE.match(path.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Optional[Path]:
    """The newest epoch checkpoint in ``directory``, or None."""
    found = epoch_checkpoints(directory)
    return found[-1] if found else None


def check_run_folder(out: str | Path, config: Any, resume: bool,
                     allow_changes: bool = False) -> tuple[Optional[Path], dict[str, tuple[Any, Any]]]:
    """What starting a run in ``out`` with ``config`` would do, without touching anything: the checkpoint it resumes
    from (None: a fresh start) and the settings that differ from the run's saved ``config.yaml`` (allowed only with
    ``allow_changes``). Commands call it before loading data, so a refused resume costs nothing.

    Raises
    ------
    SlidrError
        ``out`` already holds checkpoints and ``resume`` is False (a new run must never overwrite them).
    ResumeConflict
        Resuming with settings that differ from the run's, without ``allow_changes`` (a :class:`ConfigError`).
    """
    out = Path(out)
    resume_from = latest_checkpoint(out / CHECKPOINT_DIR)
    if resume_from is not None and not resume:
        raise SlidrError(f"{out} already holds checkpoints ({resume_from.name}); pass --resume to continue "
                         "or choose another --out")
    saved = out / CONFIG_NAME
    changes: dict[str, tuple[Any, Any]] = {}
    if resume and resume_from is not None and saved.is_file():
        changes = config_differences(yaml.safe_load(saved.read_text()) or {}, yaml.safe_load(dump_config(config)))
        if changes and not allow_changes:
            listed = "; ".join(f"{key}: run {old!r}, now {new!r}" for key, (old, new) in changes.items())
            raise ResumeConflict(f"--resume: these settings differ from the run's {saved}: {listed}. Resume with "
                                 f"the run's own settings (leave out --config and these overrides), or pass "
                                 f"--allow-changes to continue with the new values (recorded in "
                                 f"{out / RESUME_CHANGES_NAME})", changes)
    return (resume_from if resume else None), changes


def start_run_folder(out: str | Path, config: Any, resume: bool, allow_changes: bool = False) -> Optional[Path]:
    """Create run folder ``out``, save the resolved config in it, and return the checkpoint to resume from.

    Resuming continues the run with its own settings: a ``config`` that differs from the run's ``config.yaml``
    is refused, naming the keys that differ, unless ``allow_changes``; then the new settings are saved and the
    change is recorded in ``out/resume_changes.json`` (time, checkpoint, each key's value before and after).

    Raises
    ------
    SlidrError, ResumeConflict
        As :func:`check_run_folder`.
    """
    out = Path(out)
    resume_from, changes = check_run_folder(out, config, resume, allow_changes)
    saved = out / CONFIG_NAME
    if resume and resume_from is None:
        logger.warning("warning: --resume: no checkpoint in %s, starting from scratch", out / CHECKPOINT_DIR)
    if changes and resume_from is not None:  # changes are only found when resuming from a checkpoint
        _record_resume_changes(out / RESUME_CHANGES_NAME, resume_from, changes)
        logger.warning("warning: resuming %s with changed settings (%s); recorded in %s", out,
                       ", ".join(changes), out / RESUME_CHANGES_NAME)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, saved)
    return resume_from if resume else None


def config_differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two plain-data configs -> ``(before, after)`` (None: absent)."""
    changes: dict[str, tuple[Any, Any]] = {}

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in list(a) + [k for k in b if k not in a]:
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        elif a != b:
            changes[prefix] = (a, b)

    walk(before, after, "")
    return changes


def _record_resume_changes(path: Path, checkpoint: Path, changes: Mapping[str, tuple[Any, Any]]) -> None:
    records = []
    if path.is_file():
        try:
            records = list(json.loads(path.read_text()))
        except ValueError:
            records = []
    records.append({"time": datetime.datetime.now().isoformat(timespec="seconds"), "checkpoint": checkpoint.name,
                    "changes": {key: {"run": old, "now": new} for key, (old, new) in changes.items()}})
    write_json(path, records)


class EpochCheckpoint(Checkpoint):
    """Write ``epoch=NNNN.ckpt`` at the end of every training epoch; keep the last and ``keep`` others.

    Runs after the LightningModule's ``on_train_epoch_end`` (Lightning orders :class:`Checkpoint` callbacks
    last), so the epoch's loss history is in the file. Every process calls it (the strategy writes on rank 0).

    Parameters
    ----------
    directory : path
        Folder of the checkpoints.
    keep : int
        Number of older checkpoints kept besides the newest one.
    """

    def __init__(self, directory: str | Path, keep: int = 1) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.last_path: Optional[Path] = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if getattr(pl_module, "stopped_on_bad_loss", False):
            return
        path = self.directory / f"epoch={trainer.current_epoch:04d}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # the whole state: optimizer, loops, callbacks
        self.last_path = path
        if trainer.is_global_zero:
            for old in epoch_checkpoints(self.directory)[: -(self.keep + 1)]:
                old.unlink(missing_ok=True)

    def state_dict(self) -> dict[str, Any]:
        return {"last_path": str(self.last_path) if self.last_path else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        last = state_dict.get("last_path")
        self.last_path = Path(last) if last else None


def export_pretrained(path: str | Path, model_points: torch.nn.Module, model_images_head: Optional[torch.nn.Module],
                      config: Any, method: str, model_images_encoder: Optional[torch.nn.Module] = None,
                      extra: Optional[Mapping[str, torch.nn.Module]] = None) -> Path:
    """Write the exported pretrained file (atomically) and return its path.

    Parameters
    ----------
    path : path
        Destination, conventionally ``DIR/pretrained.pt``.
    model_points : nn.Module
        The 3D network; its state dict is stored on CPU.
    model_images_head : nn.Module or None
        The trainable image head (SLidR / PPKT), None for methods without one.
    config : dataclass or dict
        The resolved configuration.
    method : str
        The pretraining method.
    model_images_encoder : nn.Module or None
        The frozen image encoder, stored (``model_images_encoder``) when it cannot be rebuilt from a weights
        file, i.e. when it was randomly initialised.
    extra : name -> nn.Module, optional
        Further networks stored as state dicts under their names (e.g. ``detection_head`` of ``slidr detect``);
        readers of the exported file that do not know them ignore them.
    """
    payload = {
        "model_points": _cpu_state(model_points),
        "model_images_head": _cpu_state(model_images_head) if model_images_head is not None else {},
        "config": config if isinstance(config, dict) else to_dict(config),
        "method": method,
        "slidr_version": __version__,
    }
    if model_images_encoder is not None:
        payload["model_images_encoder"] = _cpu_state(model_images_encoder)
    for name, module in (extra or {}).items():
        if name in payload:
            raise SlidrError(f"export_pretrained: extra network name {name!r} is a key of the exported file")
        payload[name] = _cpu_state(module)
    save_atomic(payload, path, "exported file")
    return Path(path)


def load_export(path: str | Path, what: str = "pretrained file") -> dict[str, Any]:
    """Read an exported file (``pretrained.pt``, a downstream ``model.pt``, a state dict) safely.

    ``torch.load(..., weights_only=True)``: tensors and plain containers only; pickled Python objects, which
    could run code while loading, are refused.

    Parameters
    ----------
    path : path
    what : str
        How error messages name the file.

    Returns
    -------
    dict
        The file's top-level mapping, tensors on CPU.

    Raises
    ------
    SlidrError
        The file is missing, unreadable or truncated, holds pickled objects beyond tensors and plain data, or
        does not hold a mapping.
    """
    path = Path(path)
    if path.is_dir():
        inside = [path / name for name in (EXPORT_NAME, DOWNSTREAM_MODEL_NAME) if (path / name).is_file()]
        hint = f"; did you mean {inside[0]}?" if inside else ""
        raise UsageError(f"{what} {path} is a folder ({describe_folder(path)}), not a file{hint}")
    if not path.is_file():
        raise SlidrError(f"{what} {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if not found:  # not a torch file, or a truncated one
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)\n", str(error))
            raise SlidrError(f"cannot read {what} {path}: not a PyTorch file, or a damaged one"
                             + (f" ({detail.group(1).strip()})" if detail else "")) from None
        raise SlidrError(f"{what} {path} holds Python objects besides tensors and plain data (a pickled "
                         f"{found.group(1)}), which are not loaded because unpickling them could run code; export "
                         "it again with slidr, or save a plain state dict") from None
    except Exception as error:  # a truncated or foreign file: say which
        raise SlidrError(f"cannot read {what} {path}: {error}") from None
    if not isinstance(payload, Mapping):
        raise SlidrError(f"{what} {path} does not hold a dict (got {type(payload).__name__})")
    return dict(payload)


def folder_kind(folder: str | Path) -> Optional[str]:
    """What a folder is, as slidr wrote it: "pretraining" (a ``slidr pretrain`` run), "probe" / "finetune" (a
    downstream run; "downstream" when only its model.pt tells), "evaluation" (``slidr evaluate`` results),
    "world" (``slidr synth``), or None."""
    folder = Path(folder)
    config = folder / CONFIG_NAME
    if config.is_file():
        try:
            data = yaml.safe_load(config.read_text())
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict) and data.get("mode") in DOWNSTREAM_MODES:
            return str(data["mode"])
        if isinstance(data, dict) and "method" in data:
            return "pretraining"
    if (folder / EXPORT_NAME).is_file():
        return "pretraining"
    if (folder / DOWNSTREAM_MODEL_NAME).is_file():
        return "downstream"
    if (folder / "evaluation.json").is_file():
        return "evaluation"
    if (folder / "synth_summary.json").is_file():
        return "world"
    return None


_FOLDER_KINDS = {
    "pretraining": "a pretraining run of slidr pretrain",
    "probe": "a linear-probing run of slidr probe",
    "finetune": "a fine-tuning run of slidr finetune",
    "downstream": "a probe / finetune run",
    "evaluation": "evaluation results of slidr evaluate",
    "world": "a synthetic world of slidr synth",
}


def describe_folder(folder: str | Path) -> str:
    """A few words saying what ``folder`` is (``folder_kind``), for error messages."""
    kind = folder_kind(folder)
    return _FOLDER_KINDS[kind] if kind else "not a folder slidr wrote"


def load_pretraining_export(path: str | Path, command: str) -> tuple[dict[str, Any], PretrainConfig]:
    """The exported file of a pretraining and its config, for a command that needs one (``slidr knn``, ...).

    Raises
    ------
    UsageError
        ``path`` is a folder, a downstream model (``model.pt`` of probe / finetune: a classifier, not
        features) or a file without its pretraining config; the message says what it got and what it needs.
    """
    payload = load_export(path)
    needed = f"slidr {command} needs the pretrained.pt of a slidr pretrain run"
    method = payload.get("method")
    if method in DOWNSTREAM_MODES:
        raise UsageError(f"{path} is the model of a {method} run (a segmentation classifier); {needed}")
    if not isinstance(payload.get("config"), Mapping) or "method" not in payload["config"]:
        raise UsageError(f"{path} holds weights without a pretraining config; {needed}")
    return payload, exported_pretrain_config(payload["config"], where=f"{path}: config")


def export_backbone(path: str | Path) -> Optional[dict[str, Any]]:
    """The ``backbone`` settings recorded in an exported file (pretraining or downstream), or None (a plain
    state dict, the authors' release)."""
    config = load_export(path).get("config")
    backbone = config.get("backbone") if isinstance(config, Mapping) else None
    return dict(backbone) if isinstance(backbone, Mapping) else None


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def load_backbone(path: str | Path, model: torch.nn.Module, voxel_cfg: Optional[VoxelConfig] = None,
                  head_prefix: str = "final.") -> dict[str, Any]:
    """Load pretrained 3D weights into ``model``, strictly.

    Accepts the exported file of ``slidr pretrain`` or a plain state dict whose keys may carry ``module.``
    and/or ``model_points.`` prefixes (the authors' release and DDP wrappers). Keys of the other networks
    of a raw release checkpoint (``model_images.*``) are ignored when ``model_points.`` keys are present.

    Parameters
    ----------
    path : path
        The file to load.
    model : nn.Module
        The 3D network built from the same backbone settings.
    voxel_cfg : VoxelConfig, optional
        Voxelization of the run that will use the model; compared with the pretraining config when the file
        holds one (a network pretrained on other voxels sees other geometry).
    head_prefix : str
        Keys of the last point-wise layer: loaded when their shapes match, otherwise left as initialised
        (downstream training replaces that layer). All other keys must match by name and shape.

    Returns
    -------
    dict
        ``loaded`` (keys loaded), ``skipped`` (head keys left as initialised), ``config`` (the pretraining
        config dict or None), ``method`` (or None).

    Raises
    ------
    SlidrError
        The file is missing or unreadable, keys are missing/unexpected/of another shape (named), or the
        voxel settings differ.
    """
    path = Path(path)
    payload = load_export(path)
    config = payload.get("config") if isinstance(payload.get("config"), Mapping) else None
    if isinstance(payload.get("model_points"), Mapping):  # exported file or the authors' release
        state = _strip_prefixes(payload["model_points"])
    elif isinstance(payload.get("state_dict"), Mapping):  # a Lightning training checkpoint
        state = _strip_prefixes(payload["state_dict"])
    else:
        state = _strip_prefixes(payload)
    if config is not None and voxel_cfg is not None:
        _check_voxels(path, config, voxel_cfg)

    target = model.state_dict()
    problems = state_dict_problems(state, target, exempt=lambda key: key.startswith(head_prefix))
    if problems:
        raise SlidrError(f"pretrained file {path} does not fit the model: " + "; ".join(problems))

    skipped = [key for key in target if key.startswith(head_prefix)
               and (key not in state or state[key].shape != target[key].shape)]
    to_load = {key: value for key, value in state.items() if key not in skipped}
    model.load_state_dict(to_load, strict=False)
    return {"loaded": sorted(to_load), "skipped": skipped, "config": config, "method": payload.get("method")}


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Remove ``module.`` / ``model_points.`` prefixes; keep only 3D keys when the dict holds several networks."""
    tensors = {_remove_module(key): value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise SlidrError("pretrained state dict holds no tensors")
    if not any(key.startswith("model_points.") for key in tensors):
        return tensors
    # several networks (e.g. model_images.*, a Lightning checkpoint): keep the 3D one
    return {_remove_module(key[len("model_points."):]): value for key, value in tensors.items()
            if key.startswith("model_points.")}


def _remove_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _check_voxels(path: Path, config: Mapping[str, Any], voxel_cfg: VoxelConfig) -> None:
    saved = (config.get("data") or {}).get("voxel")
    if not saved:
        return
    wanted = to_dict(voxel_cfg)
    differing = [f"{key}: pretrained {saved.get(key)!r} vs now {value!r}" for key, value in wanted.items()
                 if saved.get(key) != value]
    if differing:
        raise SlidrError(f"pretrained file {path} was trained with other voxel settings (data.voxel): "
                         + "; ".join(differing))


