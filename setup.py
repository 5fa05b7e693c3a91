"""Build hook: compile the hot modules with mypyc, at build time (as mypy and black do).

``pip install .`` and ``pip wheel .`` compile the modules listed under
``[tool.cachecast] compiled`` in pyproject.toml with mypyc's setuptools support
(``mypyc.build.mypycify``); the wheel then carries C extensions and is tagged for
its platform. With ``CACHECAST_COMPILE=0``, or without mypyc or a C compiler, the
package builds as pure Python (tagged ``py3-none-any``) and runs the same code,
only slower; so it does when compiling fails (a missing Python header, say).
Developers compile in place with ``make native`` (:mod:`pipeline.build_native`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        modules: list[str] = tomllib.load(handle)["tool"]["cachecast"]["compiled"]
    return modules


def _compiler() -> str | None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


#: Commands that only describe the distribution: no need to run mypyc for them.
_METADATA_ONLY = ("egg_info", "dist_info", "sdist", "--name", "--version")


class OptionalBuildExt(build_ext):  # type: ignore[misc]  # setuptools has no stubs here
    """Compile the extensions, or, if that fails, none of them: a pure-Python build.

    All or none, because the modules share one runtime library (a missing Python
    header or a compiler error must not fail ``pip install``).
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CompileError, CCompilerError, LinkError, ...
            print(f"cachecast: compiling failed ({exc}); building pure Python", file=sys.stderr)
            built: list[Any] = list(getattr(self, "extensions", None) or [])
            for extension in built:
                Path(self.get_ext_fullpath(extension.name)).unlink(missing_ok=True)
            self.extensions = built[:0]
            self.distribution.ext_modules = built[:0]


def extensions() -> list[object]:
    """The mypyc extensions, or none (with the reason on stderr): a pure-Python build."""
    if os.environ.get("CACHECAST_COMPILE", "1").strip().lower() in ("0", "false", "no"):
        return []
    if any(arg in _METADATA_ONLY for arg in sys.argv[1:]) and not any(
        arg.startswith(("build", "bdist", "develop", "editable")) for arg in sys.argv[1:]
    ):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("cachecast: mypyc is not installed; building pure Python", file=sys.stderr)
        return []
    if _compiler() is None:
        print("cachecast: no C compiler found; building pure Python", file=sys.stderr)
        return []
    # mypyc type-checks what it compiles; imports outside the list are taken as Any
    # (the project's own mypy settings and plugins are for the checker, not this).
    scratch = tempfile.mkdtemp(prefix="cachecast-mypyc-")
    atexit.register(shutil.rmtree, scratch, True)
    config = Path(scratch) / "mypy.ini"
    config.write_text("[mypy]\nignore_missing_imports = True\nfollow_imports = skip\n")
    paths = [name.replace(".", "/") + ".py" for name in compiled_modules()]
    return list(
        mypycify(
            [f"--config-file={config}", *paths],
            opt_level="3",
            group_name="pipeline._mypyc",  # one shared runtime library for the modules
            strict_dunder_typing=False,
        )
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
