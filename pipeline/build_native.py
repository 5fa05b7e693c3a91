"""Compile the hot modules in place, for development: ``python -m pipeline.build_native``.

The models and the decide loop are plain typed Python that mypyc turns into C
extensions running the same code about twice as fast (the engine's ~20 µs per
event becomes ~10 µs). Which modules: ``[tool.cachecast] compiled`` in
pyproject.toml. How: ``setup.py``, the build hook that ``pip install .`` and
``pip wheel .`` run (mypyc's setuptools support); this command runs its
``build_ext --inplace`` so that a source checkout imports the extensions, and
only when a listed source changed since its build. ``make native`` (and so
``make test`` and ``make demo``) runs it. A build records the SHA-256 of every
source as it was when compiling began (``MANIFEST``): hashes, not mtimes, which
copies and checkouts do not keep meaningful, and a source saved during a build
is seen as changed.

Nothing checks at import time: Python imports a compiled module in preference to
its source, so a source edited after compiling runs its old build until this
command runs again. The test suite refuses to start in that state (see
``tests/conftest.py``), ``make test`` rebuilds first, and a worker logs at start
whether it runs compiled or pure Python (:func:`compiled_state`).

Without mypyc (a dev dependency) or a C compiler this prints why and exits 0:
cachecast then runs as pure Python, only slower.

    python -m pipeline.build_native           # compile (skips when up to date)
    python -m pipeline.build_native --force   # compile even when up to date
    python -m pipeline.build_native --clean   # remove the compiled modules
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

__all__ = [
    "MANIFEST",
    "ROOT",
    "build",
    "clean",
    "compiled_modules",
    "compiled_path",
    "compiled_state",
    "main",
    "stale_modules",
]

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "pipeline" / "_native_build.json"
#: The shared runtime library of the compiled modules (setup.py's ``group_name``).
_GROUP_LIBRARY = "_mypyc__mypyc"


def compiled_modules() -> list[str]:
    """The modules setup.py compiles (empty outside a source checkout)."""
    try:
        with (ROOT / "pyproject.toml").open("rb") as handle:
            modules: list[str] = tomllib.load(handle)["tool"]["cachecast"]["compiled"]
    except (OSError, KeyError):
        return []
    return modules


def source_path(name: str) -> Path:
    return ROOT.joinpath(*name.split(".")).with_suffix(".py")


def compiled_path(name: str) -> Path | None:
    """The extension module built for ``name`` in the source tree, if there is one."""
    stem = source_path(name).with_suffix("")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = stem.with_name(stem.name + suffix)
        if path.exists():
            return path
    return None


def _digest(name: str) -> str:
    return hashlib.sha256(source_path(name).read_bytes()).hexdigest()


def _extensions() -> list[Path]:
    """Every extension module under pipeline/ (once each: ``.so`` ends several suffixes)."""
    found: set[Path] = set()
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        found.update((ROOT / "pipeline").rglob("*" + suffix))
    return sorted(found)


def stale_modules() -> list[str]:
    """What would run other code than its source says.

    Listed modules without an extension or whose source changed since it was built,
    and extensions of modules no longer listed (they would still shadow their source).
    """
    try:
        built: dict[str, str] = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        built = {}
    listed = compiled_modules()
    stale = [
        name for name in listed if compiled_path(name) is None or built.get(name) != _digest(name)
    ]
    for path in _extensions():
        module = path.name.split(".", 1)[0]
        name = ".".join((*path.relative_to(ROOT).parent.parts, module))
        if module != _GROUP_LIBRARY and name not in listed:
            stale.append(f"{name} (no longer listed: remove {path.name})")
    return stale


def compiled_state() -> str:
    """``"compiled"`` when the engine runs as an extension, else ``"pure"``.

    Imports the engine (so only where it is used anyway: a worker, the simulator).
    """
    import pipeline.models.engine as engine

    loader = getattr(engine, "__loader__", None)
    return "compiled" if isinstance(loader, importlib.machinery.ExtensionFileLoader) else "pure"


def clean() -> int:
    removed = 0
    for path in _extensions():
        path.unlink()
        removed += 1
    MANIFEST.unlink(missing_ok=True)
    return removed


def build(force: bool = False) -> bool:
    """Compile in place; False (with the reason printed) when not possible."""
    if not compiled_modules():
        print("not a source checkout (no pyproject.toml): nothing to compile", file=sys.stderr)
        return False
    if not force and not stale_modules():
        print("native modules are up to date")
        return True
    clean()  # all or none: no extension of an unlisted module is left behind
    digests = {name: _digest(name) for name in compiled_modules()}  # what is compiled
    with tempfile.TemporaryDirectory(prefix="cachecast-native-") as tmp:
        done = subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--build-temp", tmp],
            cwd=ROOT,
            env={**os.environ, "CACHECAST_COMPILE": "1"},
            capture_output=True,
            text=True,
            check=False,
        )
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # mypyc's generated C
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
        print("compiling failed: running as pure Python", file=sys.stderr)
        clean()
        return False
    if "building pure Python" in done.stderr:  # setup.py said why (no mypyc, no compiler)
        print(done.stderr.strip(), file=sys.stderr)
        return False
    MANIFEST.write_text(json.dumps(digests, indent=1) + "\n")
    print(f"compiled {len(compiled_modules())} modules with mypyc")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    parser.add_argument("--force", action="store_true", help="compile even when up to date")
    args = parser.parse_args(argv)
    if args.clean:
        print(f"removed {clean()} compiled files")
        return 0
    build(force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
