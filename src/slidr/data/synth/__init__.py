"""A procedural driving world written as a nuScenes (or SemanticKITTI) dataset: ``slidr synth``.

Modules: :mod:`~slidr.data.synth.world` lays out one scene (analytic primitives with their nuScenes category,
SemanticKITTI part id, colour, texture and lidar reflectivity); :mod:`~slidr.data.synth.raycast` intersects rays
with the primitives (numba, a 2-D grid of cells culls them); :mod:`~slidr.data.synth.sensors` holds the lidar
and the six cameras; :mod:`~slidr.data.synth.render` shades camera rays; the writers put frames on disk in
either layout; :mod:`~slidr.data.synth.generate` runs it all (``generate_world``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_numba_cache_dir() -> str:
    # numba reads NUMBA_CACHE_DIR when it is first imported: compiled kernels then survive between runs
    # (6-8 s of compilation otherwise). A read-only home falls back to the temporary folder.
    candidate = Path.home() / ".cache" / "slidr" / "numba"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        if os.access(candidate, os.W_OK):
            return str(candidate)
    except OSError:
        pass
    return str(Path(tempfile.gettempdir()) / "slidr-numba-cache")


os.environ.setdefault("NUMBA_CACHE_DIR", _default_numba_cache_dir())

from slidr.data.synth.generate import generate_world  # noqa: E402  (needs NUMBA_CACHE_DIR first)

__all__ = ["generate_world"]
