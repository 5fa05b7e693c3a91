"""Compile the hot modules with mypyc, in place: ``python -m pipeline.build_native``.

The models and the decide loop are plain typed Python; mypyc turns them into C
extensions that run the same code about twice as fast (the engine's ~20 µs per
event becomes ~10 µs). Nothing else changes: same results, same snapshots, and
the pure-Python modules stay the reference (``CACHECAST_PURE_PYTHON=1`` uses
them even when compiled ones exist; see :mod:`pipeline._native`).

Compiling needs mypy (a dev dependency) and a C compiler. Without either this
prints why and exits 0: cachecast then runs as pure Python, only slower.
``make demo`` and ``make test`` run it after installing, and again whenever one
of the compiled sources changed.

    python -m pipeline.build_native           # compile (skips when up to date)
    python -m pipeline.build_native --clean   # remove the compiled modules
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from pipeline._native import (
    COMPILED,
    MANIFEST,
    ROOT,
    source_digest,
    source_path,
    stale_modules,
)

__all__ = ["build", "clean", "main"]

GROUP = "pipeline._mypyc"  # the shared runtime library of the compiled modules

_SETUP = """
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="cachecast-native",
    ext_modules=mypycify(
        {paths!r},
        opt_level="3",
        group_name={group!r},
        strict_dunder_typing=False,
    ),
)
"""


def _compiler() -> str | None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


def up_to_date() -> bool:
    return not stale_modules()


def clean() -> int:
    removed = 0
    for path in [*(ROOT / "pipeline").rglob("*.so"), *(ROOT / "pipeline").rglob("*.pyd")]:
        path.unlink()
        removed += 1
    MANIFEST.unlink(missing_ok=True)
    return removed


def build(force: bool = False) -> bool:
    """Compile :data:`COMPILED` in place; False (with the reason printed) when not possible."""
    if not force and up_to_date():
        print("native modules are up to date")
        return True
    try:
        import mypyc  # noqa: F401
    except ImportError:
        print("mypyc is not installed (pip install mypy): running as pure Python", file=sys.stderr)
        return False
    if _compiler() is None:
        print("no C compiler found: running as pure Python", file=sys.stderr)
        return False
    paths = [str(source_path(name).relative_to(ROOT)) for name in COMPILED]
    digests = {name: source_digest(name) for name in COMPILED}  # what is being compiled
    with tempfile.TemporaryDirectory(prefix="cachecast-native-") as tmp:
        # mypyc type-checks what it compiles; imports outside the list are taken as Any
        # (the project's own mypy settings and plugins are for the checker, not this).
        config = Path(tmp) / "mypy.ini"
        config.write_text("[mypy]\nignore_missing_imports = True\nfollow_imports = skip\n")
        setup = Path(tmp) / "setup.py"
        setup.write_text(_SETUP.format(paths=[f"--config-file={config}", *paths], group=GROUP))
        done = subprocess.run(
            [sys.executable, str(setup), "build_ext", "--inplace", "--build-temp", tmp],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
        print("compiling failed: running as pure Python", file=sys.stderr)
        clean()
        return False
    MANIFEST.write_text(json.dumps({name: digests[name] for name in COMPILED}, indent=1) + "\n")
    print(f"compiled {len(COMPILED)} modules with mypyc")
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
