"""Compiled (mypyc) hot modules behave exactly like the pure-Python sources, and an
out-of-date build is noticed."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import build_native

_RUN_ENGINE = """
import json, sys
from pipeline.config import Settings
from pipeline.decide import Decider, engine_config
from pipeline.models import WarmEngine
from pipeline.sim.traces import BUNDLED_TRACE, load_trace
from pipeline.sim.synthetic import session_workload, synthetic_workload
import pipeline.models.engine as module
trace = load_trace(BUNDLED_TRACE, max_requests=20_000)
events = [
    {"namespace": "n", "key": str(k), "ts": float(i), "op": "get",
     "outcome": "miss" if i % 3 else "hit", "user": None, "warmed": False}
    for i, k in enumerate(trace.keys.tolist())
]
# Then a workload with wall-clock time: the time-of-week profiles run too; and one
# with users in sessions: the user models run.
timed, _ = synthetic_workload(days=3, requests_per_day=20_000, seed=0)
events += [
    {"namespace": "n", "key": str(k), "ts": t, "op": "get",
     "outcome": "miss" if i % 3 else "hit", "user": None, "warmed": False}
    for i, (k, t) in enumerate(zip(timed.keys.tolist(), timed.ts.tolist()))
]
sessions, _ = session_workload(days=2, requests_per_day=10_000, users=300)
events += [
    {"namespace": "n", "key": str(k), "ts": t + 4 * 86_400, "op": "get",
     "outcome": "miss" if i % 3 else "hit", "user": str(u), "warmed": False}
    for i, (k, t, u) in enumerate(zip(sessions.keys.tolist(), sessions.ts.tolist(),
                                      sessions.users.tolist()))
]
settings = Settings(model_delay_requests=10)
engine = WarmEngine(engine_config(settings))
now = [0.0]
decider = Decider(settings, model_version="t", clock=lambda: now[0])
warms = []
for i in range(0, len(events), 50):
    now[0] = events[i + 49 if i + 49 < len(events) else -1]["ts"]
    warms += [[c["key"], c["reason"]] for c in decider.decide(engine, events[i:i + 50])]
print(json.dumps({"file": module.__file__, "warms": warms, "stats": engine.stats()}))
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
    warms = compiled["warms"]
    assert isinstance(warms, list)
    assert warms, "the engine warmed nothing: the comparison would prove nothing"
    assert any(reason == "temporal" for _, reason in warms)  # the wall-time code ran
    assert any(reason == "user" for _, reason in warms)  # and the user models
    assert compiled["warms"] == pure["warms"]
    assert compiled["stats"] == pure["stats"]


def test_a_source_edited_after_compiling_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pipeline" / "models").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.cachecast]\ncompiled = ["pipeline.models.engine", "pipeline.decide"]\n'
    )
    monkeypatch.setattr(build_native, "ROOT", tmp_path)
    monkeypatch.setattr(build_native, "MANIFEST", tmp_path / "pipeline" / "_native_build.json")
    assert build_native.stale_modules() == ["pipeline.models.engine", "pipeline.decide"]
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for name in ("pipeline/models/engine", "pipeline/decide"):
        (tmp_path / f"{name}.py").write_text("x = 1\n")
        (tmp_path / (name + suffix)).write_bytes(b"")
    assert build_native.stale_modules() == ["pipeline.models.engine", "pipeline.decide"]
    digests = {n: build_native._digest(n) for n in ("pipeline.models.engine", "pipeline.decide")}
    build_native.MANIFEST.write_text(json.dumps(digests))
    assert build_native.stale_modules() == []  # built from these very sources
    (tmp_path / "pipeline/models/engine.py").write_text("x = 2\n")  # edited since
    assert build_native.stale_modules() == ["pipeline.models.engine"]
    (tmp_path / "pipeline/models/engine.py").write_text("x = 1\n")
    (tmp_path / ("pipeline/routing" + suffix)).write_bytes(b"")  # built, then unlisted
    (tmp_path / ("pipeline/_mypyc__mypyc" + suffix)).write_bytes(b"")  # the shared library
    stale = build_native.stale_modules()
    assert len(stale) == 1
    assert stale[0].startswith("pipeline.routing (no longer listed")
