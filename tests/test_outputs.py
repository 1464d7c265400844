"""Outputs that cannot be written, and writes that fail: one line naming the file, never a traceback.

Two classes of problem (issue "Trust", items 6 and 7):

- an output path that cannot be created or written (a path under a file, a file where a folder is needed or the
  reverse, a location that refuses new files) is refused by every command before any work, exit code 2;
- a write that fails mid-run (full disk) names the file; a failed checkpoint says which earlier one is intact,
  and that one is untouched. A full disk is simulated by the file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored): the
  kernel then refuses the write past the limit (EFBIG), as a full disk does (ENOSPC).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from slidr.cli.main import EXIT_FAILURE, EXIT_USAGE, command_modules, main
from slidr.config import DownstreamConfig, save_config
from slidr.errors import WriteError


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder where new files are refused: /sys (read-only to everyone in containers and CI), else a folder
    without write permission (effective for non-root users)."""
    with contextlib.suppress(OSError):
        fd, probe = tempfile.mkstemp(dir="/sys")
        os.close(fd)
        os.unlink(probe)
        return _chmod_folder(tmp_path)
    if Path("/sys").is_dir():
        return Path("/sys")
    return _chmod_folder(tmp_path)


def _chmod_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("no location refuses new files here (root ignores permissions, /sys is writable)")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.fixture
def places(tmp_path):
    """Paths of the bad kinds: under a file, an existing file, an existing folder, an unwritable folder."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run = tmp_path / "probe_run"  # evaluate needs a run folder to resolve its settings
    run.mkdir()
    save_config(DownstreamConfig(), run / "config.yaml")
    return {"blocker": blocker, "folder": tmp_path, "unwritable": _unwritable_folder(tmp_path), "run": run}


# every command that writes, with its output option, its kind, and the rest of a command line that gets as far as
# the output check (the inputs need not exist: outputs are checked first)
COMMANDS = {
    "pretrain": (["pretrain"], "--out", "folder"),
    "probe": (["probe"], "--out", "folder"),
    "finetune": (["finetune"], "--out", "folder"),
    "prepare": (["prepare", "nuscenes", "--dataroot", "nowhere"], "--out", "file"),
    "evaluate": (["evaluate", "{run}"], "--out", "folder"),
    "report": (["report", "{run}"], "--out", "folder"),
    "knn": (["knn", "--pretrained", "p.pt"], "--out", "folder"),
    "similarity": (["similarity", "--pretrained", "p.pt"], "--out", "file"),
    "superpixels": (["superpixels", "--index", "i.npz"], "--json", "file"),
    "superpixel folder": (["superpixels", "--index", "i.npz"], "--root", "folder"),
    "inspect": (["inspect", "--index", "i.npz", "--sample", "0"], "--json", "file"),
    "synth": (["synth"], "--out", "folder"),
    "demo": (["demo"], "--out", "folder"),
    "bench": (["bench", "synth"], "--json", "file"),
}


def test_every_writing_command_declares_its_outputs():
    declared = {module.NAME for module in command_modules() if getattr(module, "OUTPUTS", None)}
    assert declared == {"pretrain", "probe", "finetune", "prepare", "evaluate", "report", "knn", "similarity",
                        "superpixels", "inspect", "synth", "demo", "bench"}
    assert {argv[0] for argv, _, _ in COMMANDS.values()} == declared


def _bad_paths(places, kind, derived=False):
    """(description, path, expected words) of every bad output of a kind (``derived``: the option gives a folder
    the output lies in, so only the paths under which nothing can be created apply)."""
    blocker, unwritable = places["blocker"], places["unwritable"]
    cases = [("under a file", blocker / "out" / "x", "is a file, not a folder"),
             ("in an unwritable folder", unwritable / "slidr-out", "cannot write in")]
    if derived:
        return cases
    if kind == "folder":
        cases.append(("an existing file", blocker, "exists and is not a folder"))
    else:
        cases.append(("an existing folder", places["folder"], "is a folder; give a file name"))
    return cases


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unwritable_outputs_are_refused_before_any_work(name, places, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, option, kind = COMMANDS[name]
    argv = [word.format(run=places["run"]) for word in argv]
    for description, path, words in _bad_paths(places, kind, derived=name == "superpixel folder"):
        before = sorted(tmp_path.rglob("*"))
        code = main([*argv, option, str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == EXIT_USAGE, (name, description, err)
        assert len(err) == 1 and words in err[0] and str(path) in err[0], (name, description, err)
        assert "Traceback" not in err[0]
        assert sorted(tmp_path.rglob("*")) == before, (name, description)  # nothing created


def test_derived_default_outputs_are_checked_too(places, capsys):
    # evaluate writes RUN/eval-SPLIT by default: a file in its place is refused before the evaluation
    (places["run"] / "eval-val").write_text("in the way")
    assert main(["evaluate", str(places["run"])]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--out (default)" in err and "eval-val: exists and is not a folder" in err


# --- writes that fail mid-run ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def disk_full_after(limit_bytes: int):
    """Files of this process cannot grow past ``limit_bytes`` (writes fail with EFBIG, as a full disk's ENOSPC)."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


def test_failed_writes_name_the_file_and_keep_what_was_there(tmp_path):
    from slidr.engine.checkpoint import save_atomic
    from slidr.utils.io import atomic_write_bytes, write_json

    big = {"weights": torch.zeros(200_000)}
    writers = {
        "torch file": (tmp_path / "model.pt", lambda path: save_atomic(big, path)),
        "JSON": (tmp_path / "summary.json", lambda path: write_json(path, {"values": list(range(100_000))})),
        "bytes": (tmp_path / "data.bin", lambda path: atomic_write_bytes(path, bytes(300_000))),
    }
    for what, (path, write) in writers.items():
        path.write_bytes(b"previous content")
        with disk_full_after(50_000), pytest.raises(WriteError) as caught:
            write(path)
        message = str(caught.value)
        assert f"cannot write {path}" in message or f"cannot write exported file {path}" in message, what
        assert caught.value.reason == os.strerror(27), what  # EFBIG: "File too large", the system's own words
        assert path.read_bytes() == b"previous content", what  # untouched
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], what  # no temporary file


def test_a_failed_checkpoint_says_the_previous_one_is_intact(tmp_path):
    import lightning as L

    from slidr.engine.checkpoint import CHECKPOINT_DIR, epoch_checkpoints
    from test_pretrain_trainer import _config, _train

    class DiskFullFromEpoch(L.Callback):
        """The disk fills up during epoch 1: its checkpoint cannot be written."""

        def __init__(self) -> None:
            self.stack = contextlib.ExitStack()

        def on_train_epoch_end(self, trainer, pl_module):  # before EpochCheckpoint (Checkpoint callbacks run last)
            if trainer.current_epoch == 1:
                self.stack.enter_context(disk_full_after(1000))

        def on_exception(self, trainer, pl_module, exception):  # first thing Lightning does with the error
            self.stack.close()

    full = DiskFullFromEpoch()
    try:
        with pytest.raises(WriteError) as caught:
            _train(tmp_path, "run", cfg=_config(**{"trainer.epochs": 3}), callbacks=[full])
    finally:
        full.stack.close()
    first = tmp_path / "run" / CHECKPOINT_DIR / "epoch=0000.ckpt"
    message = str(caught.value)
    assert "cannot write checkpoint" in message and "epoch=0001.ckpt" in message
    assert f"the previous checkpoint {first} is intact" in message
    assert epoch_checkpoints(tmp_path / "run" / CHECKPOINT_DIR) == [first]
    state = torch.load(first, weights_only=False)  # readable, and the state of the end of epoch 0
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    resumed = _train(tmp_path, "run", cfg=_config(**{"trainer.epochs": 3}), resume=True)
    assert resumed["epochs"] == 3


def test_a_full_disk_while_writing_superpixels_is_one_line(tiny_nuscenes_world, tmp_path, capsys):
    from slidr.data.prepare_nuscenes import prepare_nuscenes
    from slidr.data.superpixels import write_label_png

    labels = np.arange(64 * 64, dtype=np.int64).reshape(64, 64) % 300
    target = tmp_path / "sp" / "CAM_FRONT" / "image.png"
    with disk_full_after(500), pytest.raises(WriteError, match=f"cannot write {target}: File too large"):
        write_label_png(target, labels)
    assert not target.exists()

    index = tmp_path / "index.npz"
    prepare_nuscenes(tiny_nuscenes_world, "v1.0-trainval", index)
    capsys.readouterr()
    with disk_full_after(2000):
        code = main(["superpixels", "--index", str(index), "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_FAILURE
    assert len(err) == 2 and "superpixels: error: cannot write" in err[-1] and ".runs: File too large" in err[-1]


def test_exit_codes_separate_usage_from_failures(tmp_path, capsys):
    # usage (2): an unknown key, a bad value, an unusable --out; failure (1): missing or broken data
    assert main(["inspect", "--index", "i.npz", "--sample", "0", "nope=1"]) == EXIT_USAGE
    assert main(["synth", "--out", str(tmp_path / "w"), "--scenes", "0"]) == EXIT_USAGE
    assert main(["inspect", "--index", str(tmp_path / "missing.npz"), "--sample", "0"]) == EXIT_FAILURE
    (tmp_path / "broken.npz").write_bytes(b"not an index")
    assert main(["inspect", "--index", str(tmp_path / "broken.npz"), "--sample", "0"]) == EXIT_FAILURE
    for line in capsys.readouterr().err.strip().splitlines():
        assert line.startswith("slidr: ") or line.startswith("usage:") or "error:" in line
