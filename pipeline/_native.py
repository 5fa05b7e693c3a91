"""Which modules may be compiled (mypyc), and when to ignore the compiled ones.

Python imports a compiled module (``engine.cpython-311-x86_64-linux-gnu.so``)
in preference to its source (``engine.py``). That is what we want, except when
the source changed after compiling (an edit not yet rebuilt would silently not
run) or when asked for the reference code (``CACHECAST_PURE_PYTHON=1``). In
both cases :func:`install` puts a finder first on ``sys.meta_path`` that loads
these modules from their ``.py`` files; a stale build is also reported once.

A build records the SHA-256 of every source it compiled in ``MANIFEST``; a
source whose hash differs is stale (hashes, not mtimes: installing a wheel or
checking out files does not keep mtimes meaningful).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__all__ = [
    "COMPILED",
    "MANIFEST",
    "ROOT",
    "compiled_path",
    "install",
    "is_compiled",
    "source_digest",
    "source_path",
    "stale_modules",
]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent

#: The hot path: the models, the decide loop, the reorder buffer, the window statistics.
COMPILED: tuple[str, ...] = (
    "pipeline.models.base",
    "pipeline.models.engine",
    "pipeline.models.ensemble",
    "pipeline.models.frequency",
    "pipeline.models.horizon",
    "pipeline.models.recency",
    "pipeline.models.rules",
    "pipeline.models.similarity",
    "pipeline.models.temporal",
    "pipeline.models.ttl",
    "pipeline.decide",
    "pipeline.reorder",
    "pipeline.histogram",
    "pipeline.stats",
    "pipeline.partitioning",
    "pipeline.routing",
    "pipeline.ttl",
)


MANIFEST = ROOT / "pipeline" / "_native_build.json"


def source_path(name: str) -> Path:
    return ROOT.joinpath(*name.split(".")).with_suffix(".py")


def compiled_path(name: str) -> Path | None:
    """The extension module built for ``name``, if there is one."""
    stem = source_path(name).with_suffix("")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = stem.with_name(stem.name + suffix)
        if path.exists():
            return path
    return None


def source_digest(name: str) -> str:
    return hashlib.sha256(source_path(name).read_bytes()).hexdigest()


def stale_modules() -> list[str]:
    """Modules without a compiled build of their current source."""
    try:
        built: dict[str, str] = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        built = {}
    return [
        name
        for name in COMPILED
        if compiled_path(name) is None or built.get(name) != source_digest(name)
    ]


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from a compiled extension."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


class _SourceFinder:
    """Loads the listed modules from their ``.py`` files, whatever else is beside them."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def install() -> str:
    """Decide between compiled and source modules, before any of them is imported.

    Returns ``"compiled"``, ``"pure"`` (nothing compiled, or asked for) or
    ``"stale"`` (compiled, but older than a source: sources used).
    """
    built = {name: compiled_path(name) for name in COMPILED}
    if not any(built.values()):
        return "pure"
    if os.environ.get("CACHECAST_PURE_PYTHON", "").strip() not in ("", "0", "false", "no"):
        mode = "pure"
    else:
        stale = stale_modules()
        if not stale:
            return "compiled"
        log.warning(
            "compiled modules do not match their sources (%s); running the sources."
            " Rebuild with `python -m pipeline.build_native`.",
            ", ".join(stale),
        )
        mode = "stale"
    # All or none: compiled modules call each other directly, so mixing is not possible.
    sys.meta_path.insert(0, _SourceFinder(frozenset(COMPILED)))
    return mode
