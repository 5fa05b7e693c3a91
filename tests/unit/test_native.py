"""Compiled (mypyc) hot modules: used only when built from the current sources, and
they behave exactly like the pure-Python reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline
from pipeline import _native

_RUN_ENGINE = """
import json, sys
import pipeline
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
print(json.dumps({"mode": pipeline.NATIVE_MODE, "file": module.__file__,
                  "keys": keys, "stats": engine.stats()}))
"""


def _engine_run(**env: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _RUN_ENGINE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=_native.ROOT,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_pure_python_can_be_asked_for() -> None:
    pure = _engine_run(CACHECAST_PURE_PYTHON="1")
    assert str(pure["file"]).endswith("engine.py")
    assert pure["mode"] == "pure"


def test_compiled_modules_give_the_same_warms_as_the_sources() -> None:
    if pipeline.NATIVE_MODE != "compiled":
        pytest.skip(f"hot modules not compiled here ({pipeline.NATIVE_MODE}); make native")
    compiled = _engine_run(CACHECAST_PURE_PYTHON="0")
    pure = _engine_run(CACHECAST_PURE_PYTHON="1")
    assert compiled["mode"] == "compiled"
    assert not str(compiled["file"]).endswith(".py")
    assert compiled["keys"], "the engine warmed nothing: the comparison would prove nothing"
    assert compiled["keys"] == pure["keys"]
    assert compiled["stats"] == pure["stats"]


def test_a_source_edited_after_compiling_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "manifest.json"
    digests = {name: _native.source_digest(name) for name in _native.COMPILED}
    digests["pipeline.models.engine"] = "0" * 64  # as if engine.py changed since
    manifest.write_text(json.dumps(digests))
    monkeypatch.setattr(_native, "MANIFEST", manifest)
    monkeypatch.setattr(_native, "compiled_path", lambda name: Path("/x.so"))
    assert _native.stale_modules() == ["pipeline.models.engine"]
    monkeypatch.setattr(_native, "MANIFEST", tmp_path / "missing.json")
    assert _native.stale_modules() == list(_native.COMPILED)
