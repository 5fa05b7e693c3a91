"""Suite-wide checks made before any test runs."""

from __future__ import annotations

import pytest

from pipeline.build_native import compiled_modules, compiled_path, stale_modules


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test an out-of-date build.

    Python imports a compiled module in preference to its source, so a source edited
    after `make native` would be tested as its old build. With no compiled module at
    all the suite runs the sources (pure Python), which is fine.
    """
    if not any(compiled_path(name) for name in compiled_modules()):
        return
    stale = stale_modules()
    if stale:
        raise pytest.UsageError(
            f"compiled modules are older than their sources ({', '.join(stale)}):"
            " run `make native` (or `make test`, which does)"
        )
