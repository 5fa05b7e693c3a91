"""Compiled (mypyc) hot modules behave exactly like the pure-Python sources, and an
out-of-date build is noticed."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import build_native

_RUN_ENGINE = """
import json, sys
from pipeline.config import Settings
from pipeline.decide import Decider, engine_config
from pipeline.models import WarmEngine
from pipeline.replay import BUNDLED_TRACE, load_trace
import pipeline.models.engine as module
trace = load_trace(BUNDLED_TRACE, max_requests=20_000)
events = [
    {"namespace": "n", "key": str(k), "ts": float(i), "op": "get",
     "outcome": "miss" if i % 3 else "hit", "user": None, "warmed": False}
    for i, k in enumerate(trace.keys.tolist())
]
settings = Settings(model_delay_requests=10)
engine = WarmEngine(engine_config(settings))
decider = Decider(settings, model_version="t", clock=lambda: 0.0)
keys = [c["key"] for i in range(0, len(events), 500)
        for c in decider.decide(engine, events[i:i + 500])]
print(json.dumps({"file": module.__file__, "keys": keys, "stats": engine.stats()}))
"""


def _engine_run(root: Path) -> dict[str, object]:
    """Run the engine with ``root`` first on the path (``python -c`` puts the cwd first)."""
    done = subprocess.run(
        [sys.executable, "-c", _RUN_ENGINE],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _sources_only(tmp_path: Path) -> Path:
    """A copy of the packages without any compiled module: the pure-Python reference."""
    for package in ("pipeline", "schemas"):
        shutil.copytree(
            build_native.ROOT / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
        )
    return tmp_path


def test_compiled_modules_give_the_same_warms_as_the_sources(tmp_path: Path) -> None:
    if build_native.compiled_path("pipeline.models.engine") is None:
        pytest.skip("hot modules not compiled here (make native)")
    compiled = _engine_run(build_native.ROOT)
    pure = _engine_run(_sources_only(tmp_path))
    assert not str(compiled["file"]).endswith(".py")
    assert str(pure["file"]).endswith("engine.py")
    assert compiled["keys"], "the engine warmed nothing: the comparison would prove nothing"
    assert compiled["keys"] == pure["keys"]
    assert compiled["stats"] == pure["stats"]


def test_a_source_edited_after_compiling_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pipeline" / "models").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.cachecast]\ncompiled = ["pipeline.models.engine", "pipeline.decide"]\n'
    )
    monkeypatch.setattr(build_native, "ROOT", tmp_path)
    assert build_native.stale_modules() == ["pipeline.models.engine", "pipeline.decide"]
    for name in ("pipeline/models/engine", "pipeline/decide"):
        (tmp_path / f"{name}.py").write_text("x = 1\n")
        (tmp_path / (name + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")
    future = time.time() + 60
    os.utime(tmp_path / "pipeline/models/engine.py", (future, future))  # edited since
    assert build_native.stale_modules() == ["pipeline.models.engine"]
