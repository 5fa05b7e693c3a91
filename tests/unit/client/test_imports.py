"""The client is light: importing it pulls in neither Faust nor the devstack."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_client_imports_neither_faust_nor_the_devstack() -> None:
    probe = (
        "import sys, pipeline.client, pipeline.client.sync;"
        "heavy = sorted(m for m in ('faust', 'mode', 'pipeline.devstack', 'agents') "
        "if m in sys.modules);"
        "print(','.join(heavy))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""
