"""A non-editable install (``pip install .``) works outside the source tree: ``slidr demo`` finds its configs.

The package is built from a copy of the sources (the checkout gets no ``build/`` or ``*.egg-info``) and installed
without dependencies, without build isolation and without an index (nothing is downloaded) into a fresh target
folder; the commands then run from another folder with only that target on the path (torch & co. come from the
running environment).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK_PACKAGED = """
import sys
from pathlib import Path
import slidr
from slidr.config import load_config, packaged_config_class, packaged_config_dir, packaged_configs
assert Path(slidr.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), slidr.__file__
names = packaged_configs()
assert len(names) >= 12, names
for name in names:
    load_config(packaged_config_class(name), name)
print(len(names), packaged_config_dir())
"""


@pytest.mark.slow
def test_non_editable_install_runs_the_demo_and_resolves_every_packaged_config(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = tmp_path / "site"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                              "--no-index", "--target", str(target), str(source)],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr
    assert not (target / "slidr" / "configs").is_symlink()
    packaged = sorted(p.name for p in (target / "slidr" / "configs").iterdir())
    assert packaged == ["demo", "detection", "downstream", "pretrain"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["PYTHONPATH"] = str(target)

    def run(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=elsewhere)
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
        return done

    slidr = str(target / "bin" / "slidr")
    assert "usage: slidr demo" in run(sys.executable, slidr, "demo", "--help").stdout
    demo = run(sys.executable, slidr, "demo", "--print-config", "--pretrain", "trainer.epochs=1").stdout
    assert "method: ppkt" in demo and "epochs: 1" in demo
    paper = run(sys.executable, slidr, "pretrain", "--config", "configs/pretrain/slidr_minkunet.yaml",
                "--print-config").stdout
    assert "lr: 0.5" in paper and "n_segments: 150" in paper
    assert "slidr_minkunet.yaml" in run(sys.executable, slidr, "configs", "--check").stdout
    in_source = len(list((REPO / "src" / "slidr" / "configs").rglob("*.yaml")))  # every one is installed
    assert run(sys.executable, "-c", CHECK_PACKAGED, str(target)).stdout.startswith(f"{in_source} ")
