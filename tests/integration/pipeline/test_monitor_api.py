"""The monitor API of a live worker: its views, and its actions behind the bearer token."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from typing import Any

import orjson
import redis

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


def test_views_and_token_guarded_actions(start_worker: StartWorker, settings: Settings) -> None:
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
