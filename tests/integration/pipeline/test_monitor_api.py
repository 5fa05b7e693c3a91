"""The monitor API of a live worker: its views, and its actions behind the bearer token."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import orjson
import pytest
import redis

from pipeline import cli
from pipeline.client.keys import data_key
from pipeline.config import Settings
from pipeline.worker import WorkerProcess
from tests.integration.pipeline.conftest import StartWorker

TOKEN = "t0k-for-tests"


def _call(
    worker: WorkerProcess, method: str, query: str = "", body: Any = None, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    request = urllib.request.Request(
        f"http://127.0.0.1:{worker.web_port}/api/cache/monitor{query}", data=data, method=method
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def test_views_and_token_guarded_actions(
    start_worker: StartWorker,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"monitor-{uuid.uuid4().hex[:8]}"  # no other test writes here
    loaders = {namespace: {"callable": "pipeline.replay:demo_origin", "rate": 5000}}
    worker = start_worker(
        CACHECAST_API_TOKEN=TOKEN, CACHECAST_LOADERS=orjson.dumps(loaders).decode()
    )
    worker.wait_ready()

    for view in ("basic", "performance", "memory", "intelligent", "health"):
        status, doc = _call(worker, "GET", f"?type={view}")
        assert status == 200
        assert doc["type"] == view
    status, doc = _call(worker, "GET", "?type=health")
    assert doc["redis"]["healthy"] is True
    assert doc["kafka"]["assigned_partitions"] > 0
    status, doc = _call(worker, "GET", "?type=memory")
    assert doc["redis"]["used_memory"] > 0
    assert doc["prefix_keys"]["prefix"] == settings.redis_key_prefix
    assert doc["prefix_keys"]["complete"] is True
    status, doc = _call(worker, "GET", "?type=basic")
    assert doc["evictions"] >= 0
    status, doc = _call(worker, "GET", "?type=everything")
    assert status == 400
    assert "unknown type" in doc["error"]

    warmup = {"action": "warmup", "params": {"namespace": namespace, "keys": ["a1", "a2", "b1"]}}
    assert _call(worker, "POST", body=warmup)[0] == 401
    assert _call(worker, "POST", body=warmup, token="wrong")[0] == 403
    assert _call(worker, "POST", body=b"{not json", token=TOKEN)[0] == 400
    assert _call(worker, "POST", body=b" " * 70_000, token=TOKEN)[0] == 413

    status, doc = _call(worker, "POST", body=warmup, token=TOKEN)
    assert status == 200, doc
    assert {k: v["status"] for k, v in doc["keys"].items()} == {
        "a1": "written",
        "a2": "written",
        "b1": "written",
    }
    raw = redis.Redis(host=settings.redis_host, port=settings.redis_port, db=settings.redis_db)
    prefix = settings.redis_key_prefix
    try:
        raw.set(data_key(prefix, "other", "a1"), b"kept")  # another namespace
        assert raw.exists(data_key(prefix, namespace, "a1"))
        status, doc = _call(
            worker,
            "POST",
            body={"action": "delete_pattern", "params": {"namespace": namespace, "pattern": "a*"}},
            token=TOKEN,
        )
        assert (status, doc["deleted"]) == (200, 2)
        status, doc = _call(
            worker,
            "POST",
            body={"action": "clear", "params": {"namespace": namespace}},
            token=TOKEN,
        )
        assert (status, doc["deleted"]) == (200, 1)
        assert raw.get(data_key(prefix, "other", "a1")) == b"kept"
        status, doc = _call(
            worker,
            "POST",
            body={"action": "configure", "params": {"maxmemory-policy": "allkeys-lru"}},
            token=TOKEN,
        )
        assert status == 200, doc
        assert raw.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    finally:
        raw.delete(data_key(prefix, "other", "a1"))
        raw.close()
    log = worker.log_path.read_text(errors="replace")
    assert f"monitor action delete_pattern on {namespace}" in log
    assert TOKEN not in log

    # The operator commands call the same API, with the token from the environment.
    url = f"http://127.0.0.1:{worker.web_port}"
    capsys.readouterr()
    monkeypatch.setenv("CACHECAST_API_TOKEN", TOKEN)
    assert cli.main(["warm", namespace, "c1", "c2", "--url", url]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{namespace}:c1: written",
        f"{namespace}:c2: written",
    ]
    assert cli.main(["tags", namespace, "no-such-tag", "--url", url]) == 0
    assert capsys.readouterr().out.strip() == f"{namespace}: 0 keys deleted"
    assert cli.main(["clear", namespace, "--url", url]) == 0
    assert capsys.readouterr().out.strip() == f"{namespace}: 2 keys deleted"
    assert cli.main(["status", "--url", url]) == 0
    table = capsys.readouterr().out
    assert f"cachecast: worker {worker_name(url)}" in table
    assert "redis: up" in table
    monkeypatch.setenv("CACHECAST_API_TOKEN", "wrong")
    assert cli.main(["clear", namespace, "--url", url]) == 1
    assert "the worker answered 403" in capsys.readouterr().err
    assert cli.main(["status", "--url", "http://127.0.0.1:1"]) == 2
    assert "cannot reach the worker" in capsys.readouterr().err

    # /metrics counts what the actions did: five values warmed on the worker path.
    written = f'cachecast_warms_written_total{{namespace="{namespace}",path="worker"}} 5.0'
    deadline = time.monotonic() + 30
    while written not in (metrics := _metrics(url)):
        assert time.monotonic() < deadline, [
            m for m in metrics.splitlines() if namespace in m and "warms" in m
        ]
        time.sleep(0.5)
    assert "cachecast_redis_up 1.0" in metrics
    assert "cachecast_operation_latency_seconds_bucket" in metrics
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed; CI installs it")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=metrics.encode(), capture_output=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "", checked.stdout.decode()


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text


def worker_name(url: str) -> str:
    with urllib.request.urlopen(url + "/api/cache/monitor?type=health", timeout=10) as response:
        name: str = orjson.loads(response.read())["worker"]
    return name
