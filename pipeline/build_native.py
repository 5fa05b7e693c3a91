"""Compile the hot modules in place, for development: ``python -m pipeline.build_native``.

The models and the decide loop are plain typed Python that mypyc turns into C
extensions running the same code about twice as fast (the engine's ~20 µs per
event becomes ~10 µs). Which modules: ``[tool.cachecast] compiled`` in
pyproject.toml. How: ``setup.py``, the build hook that ``pip install .`` and
``pip wheel .`` run (mypyc's setuptools support); this command runs its
``build_ext --inplace`` so that a source checkout imports the extensions, and
only when a listed source is newer than its extension. ``make native`` (and so
``make test`` and ``make demo``) runs it.

Nothing checks at import time: Python imports a compiled module in preference to
its source, so a source edited after compiling runs its old build until this
command runs again. The test suite refuses to start in that state (see
``tests/conftest.py``), and ``make test`` rebuilds first.

Without mypyc (a dev dependency) or a C compiler this prints why and exits 0:
cachecast then runs as pure Python, only slower.

    python -m pipeline.build_native           # compile (skips when up to date)
    python -m pipeline.build_native --force   # compile even when up to date
    python -m pipeline.build_native --clean   # remove the compiled modules
"""

from __future__ import annotations

import argparse
import importlib.machinery
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

__all__ = ["ROOT", "build", "clean", "compiled_modules", "compiled_path", "main", "stale_modules"]

ROOT = Path(__file__).resolve().parent.parent


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


def stale_modules() -> list[str]:
    """Listed modules without an extension, or whose source is newer than it."""
    stale = []
    for name in compiled_modules():
        built = compiled_path(name)
        if built is None or source_path(name).stat().st_mtime > built.stat().st_mtime:
            stale.append(name)
    return stale


def clean() -> int:
    removed = 0
    for pattern in ("*.so", "*.pyd"):
        for path in (ROOT / "pipeline").rglob(pattern):
            path.unlink()
            removed += 1
    return removed


def build(force: bool = False) -> bool:
    """Compile in place; False (with the reason printed) when not possible."""
    if not compiled_modules():
        print("not a source checkout (no pyproject.toml): nothing to compile", file=sys.stderr)
        return False
    if not force and not stale_modules():
        print("native modules are up to date")
        return True
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
