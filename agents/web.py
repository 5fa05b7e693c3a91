"""HTTP: /api/cache/monitor (JSON), /dashboard (HTML), /metrics (Prometheus).

Each worker serves the namespaces whose stats partitions it owns; with several
workers, scrape each one (Prometheus does this naturally) or read the metrics
topic, which carries every namespace.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterator
from typing import Any, Final

import orjson
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.web import Request, Response, View
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agents.app import app, settings, worker_name
from agents.checkpointing import checkpointers
from agents.predict import deciders, engines
from agents.runtime import runtime
from agents.stats import namespace_stats
from pipeline.client import CacheError, RedisCacheManager, RedisConfigError
from pipeline.monitor import (
    MAX_BODY_BYTES,
    Action,
    ApiError,
    check_token,
    parse_action,
    parse_view,
)
from schemas.decode import validate_warmup_command

log = logging.getLogger(__name__)

__all__ = ["DashboardView", "MonitorView", "monitor_document"]


def monitor_document() -> dict[str, Any]:
    """What /api/cache/monitor answers."""
    namespaces = {
        ns: {"window": view["window"], "total": view["total"]}
        for ns, view in namespace_stats().items()
    }
    return {
        "worker": worker_name,
        "uptime_s": round(time.time() - runtime.started_at, 3),
        "window_s": settings.stats_window_s,
        "warming_enabled": settings.warming_enabled,
        "assigned_partitions": len(app.consumer.assignment()) if app.consumer else 0,
        "rebalancing": bool(app.rebalancing),
        "counters": dict(runtime.counters),
        "consume_lag": runtime.lag_summary(),
        "checkpoints": {c.stage: c.describe() for c in checkpointers},
        "models": {str(p): engine.stats() for p, engine in sorted(engines.models.items())},
        "lookahead": _lookahead(),
        "namespaces": namespaces,
    }


def _lookahead() -> dict[str, Any]:
    """How far ahead each partition predicts, and the measurements that set it."""
    latency = runtime.warm_latency
    out: dict[str, Any] = {
        "auto": settings.model_auto_lookahead,
        "warm_latency_p50_ms": _ms(latency.quantile(0.5)),
        "warm_latency_p90_ms": _ms(latency.quantile(0.9)),
        "warms_measured": len(latency),
    }
    for partition, found in sorted(deciders.items()):
        if found.tuner is not None:
            out[str(partition)] = {
                "rate_per_s": round(found.tuner.rate, 1),
                "lead_requests": found.tuner.lead,
                "delay_requests": found.tuner.delay,
            }
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@app.task
async def watch_event_loop() -> None:
    """Measure how late the event loop runs a 50 ms sleep: every stall delays every agent."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(0.05)
        runtime.loop_stall.add(max(0.0, time.perf_counter() - started - 0.05) * 1e6)


_BASIC: Final = ("events", "hits", "misses", "sets", "deletes", "errors", "hit_ratio")
_PERFORMANCE: Final = ("latency_p50_us", "latency_p90_us", "latency_p99_us", "events")
_INTELLIGENT: Final = (
    "prediction_precision",
    "prediction_recall",
    "warms_issued",
    "warms_written",
    "warms_useful",
    "warm_precision",
    "edge_warms_issued",
    "edge_warms_written",
    "edge_warms_useful",
    "edge_warm_precision",
    "joined_reads",
)
_INFO_TTL_S: Final = 5.0
_info_cache: dict[str, tuple[float, dict[str, Any]]] = {}


async def _redis_info() -> dict[str, Any]:
    """Redis memory, evictions and reachability (cached for a few seconds)."""
    cached = _info_cache.get("info")
    if cached is not None and time.monotonic() - cached[0] < _INFO_TTL_S:
        return cached[1]
    manager = _manager()
    try:
        stats = (await manager.get_stats())["redis"]
        health = await manager.health_check()
    except Exception as exc:  # Redis down: say so, do not fail the view
        stats, health = {}, {"healthy": False, "latency_ms": None, "error": repr(exc)}
    found = {"stats": stats, "health": health}
    _info_cache["info"] = (time.monotonic(), found)
    return found


def _pick(namespaces: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {ns: {n: view["total"].get(n) for n in names} for ns, view in namespaces.items()}


async def monitor_view(view: str) -> dict[str, Any]:
    """One ``?type=`` view of the monitor (``all``: the whole document plus Redis)."""
    doc = monitor_document()
    namespaces: dict[str, Any] = doc["namespaces"]
    redis = await _redis_info() if view in ("all", "basic", "memory", "health") else {}
    stats: dict[str, Any] = redis.get("stats", {})
    if view == "all":
        return {**doc, "redis": stats, "redis_health": redis.get("health")}
    out: dict[str, Any] = {"worker": doc["worker"], "type": view}
    if view == "basic":
        out["namespaces"] = _pick(namespaces, _BASIC)
        out["evictions"] = stats.get("evictions")
    elif view == "performance":
        window = doc["window_s"]
        out["namespaces"] = {
            ns: {
                **{n: v["window"].get(n) for n in _PERFORMANCE},
                "throughput_per_s": round(v["window"]["events"] / window, 2) if window else None,
            }
            for ns, v in namespaces.items()
        }
        out["consume_lag"] = doc["consume_lag"]
        out["lookahead"] = doc["lookahead"]
    elif view == "memory":
        out["redis"] = stats.get("memory")
        out["keyspace"] = stats.get("keyspace")
        out["namespaces"] = {
            ns: {"compression_ratio": v["total"].get("compression_ratio")}
            for ns, v in namespaces.items()
        }
    elif view == "intelligent":
        out["namespaces"] = _pick(namespaces, _INTELLIGENT)
        out["models"] = doc["models"]
    else:  # health
        out["redis"] = redis.get("health")
        out["kafka"] = {
            "assigned_partitions": doc["assigned_partitions"],
            "rebalancing": doc["rebalancing"],
            "consume_lag": doc["consume_lag"],
        }
        out["counters"] = {
            k: doc["counters"].get(k, 0) for k in ("events", "dead_letters", "poison_records")
        }
        out["last_event_age_s"] = runtime.last_event_age()
    return out


@functools.cache
def _manager() -> RedisCacheManager:
    """The cache API over the worker's own Redis client (no second connection pool)."""
    return RedisCacheManager(settings, redis=runtime.redis)


async def run_action(action: Action) -> dict[str, Any]:
    """Carry out a validated action; what it did, for the caller and the log."""
    manager = _manager()
    namespace = action.namespace or ""
    if action.name == "clear":
        return {"deleted": await manager.delete_by_pattern(namespace, "*")}
    if action.name == "delete_pattern":
        return {"deleted": await manager.delete_by_pattern(namespace, action.params["pattern"])}
    if action.name == "invalidate_tags":
        return {"deleted": await manager.delete_by_tags(namespace, action.params["tags"])}
    if action.name == "configure":
        return {"applied": await manager.configure_redis(action.params)}
    now = time.time()
    commands = [
        validate_warmup_command(
            {
                "namespace": namespace,
                "key": key,
                "score": 1.0,
                "reason": "manual",
                "ttl": settings.redis_default_ttl,
                "deadline": now + 60.0,
                "issued_at": now,
                "model_version": "monitor-api",
            }
        )
        for key in action.params["keys"]
    ]
    outcomes = await runtime.writer.apply(commands)
    return {"keys": {o["key"]: {"status": o["status"], "error": o.get("error")} for o in outcomes}}


@app.page("/api/cache/monitor")
class MonitorView(View):
    async def get(self, request: Request) -> Response:
        try:
            view = parse_view(request.query.get("type"))
        except ApiError as exc:
            return self.json({"error": exc.message}, status=exc.status)
        return self.json(await monitor_view(view))

    async def post(self, request: Request) -> Response:
        token = settings.api_token.get_secret_value() if settings.api_token else None
        refused = check_token(request.headers.get("Authorization"), token)
        if refused is not None:
            log.warning("monitor action refused: %s", refused.message)
            return self.json({"error": refused.message}, status=refused.status)
        declared = request.headers.get("Content-Length", "0")
        if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
            return self.json({"error": f"body over {MAX_BODY_BYTES} bytes"}, status=413)
        try:
            action = parse_action(await request.read())
            result = await run_action(action)
        except ApiError as exc:
            return self.json({"error": exc.message}, status=exc.status)
        except (ValueError, RedisConfigError) as exc:
            return self.json({"error": str(exc)}, status=400)
        except CacheError as exc:
            return self.json({"error": f"Redis: {exc}"}, status=503)
        log.warning(  # an audit trail: operators' changes are seen at the default level
            "monitor action %s on %s: %s",
            action.name,
            action.namespace or "redis",
            orjson.dumps(result).decode()[:500],
        )
        return self.json({"action": action.name, "namespace": action.namespace, **result})


_DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cachecast</title>
<style>
 body{font:14px system-ui,sans-serif;margin:2em;color:#222}
 table{border-collapse:collapse;margin-top:1em}
 td,th{padding:.35em .8em;border-bottom:1px solid #ddd;text-align:right}
 th:first-child,td:first-child{text-align:left}
 .muted{color:#777}
</style></head><body>
<h1>cachecast</h1>
<p class="muted" id="meta">loading…</p>
<table id="t"><thead><tr><th>namespace</th><th>events</th><th>hit ratio</th>
<th>p50 µs</th><th>p99 µs</th><th>warms written</th><th>warms useful</th>
<th>warm precision</th><th>edge warms written</th><th>edge warms useful</th>
<th>edge warm precision</th><th>joined reads</th>
<th>prediction precision</th><th>recall</th></tr></thead>
<tbody></tbody></table>
<script>
const pct = v => v === null || v === undefined ? "-" : (100 * v).toFixed(1) + "%";
const num = v => v === null || v === undefined ? "-" : Math.round(v).toLocaleString();
async function refresh() {
  const doc = await (await fetch("/api/cache/monitor")).json();
  document.getElementById("meta").textContent =
    `worker ${doc.worker} · up ${Math.round(doc.uptime_s)} s · window ${doc.window_s} s · ` +
    `warming ${doc.warming_enabled ? "on" : "off"} · ` +
    `dead letters ${doc.counters.dead_letters || 0}`;
  // Text only: a namespace or a number from the data never becomes markup.
  const rows = Object.entries(doc.namespaces).map(([ns, v]) => {
    const t = v.total;
    const cells = [ns, num(t.events), pct(t.hit_ratio), num(t.latency_p50_us),
      num(t.latency_p99_us), num(t.warms_written), num(t.warms_useful),
      pct(t.warm_precision), num(t.edge_warms_written), num(t.edge_warms_useful),
      pct(t.edge_warm_precision), num(t.joined_reads), pct(t.prediction_precision),
      pct(t.prediction_recall)];
    const tr = document.createElement("tr");
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = String(text);
      tr.appendChild(td);
    }
    return tr;
  });
  document.querySelector("#t tbody").replaceChildren(...rows);
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""


@app.page("/dashboard")
class DashboardView(View):
    async def get(self, request: Request) -> Response:
        return self.html(_DASHBOARD)


class StatsCollector(Collector):
    """Exposes the stats table (all-time per namespace) at scrape time."""

    _COUNTERS = (
        ("events", "Access events"),
        ("hits", "Reads that hit"),
        ("misses", "Reads that missed"),
        ("sets", "Writes"),
        ("deletes", "Deletes"),
        ("errors", "Operations that failed in Redis"),
        ("warms_issued", "Warmup commands issued by the worker"),
        ("warms_written", "Values warmed by the worker"),
        ("warms_useful", "Values warmed by the worker and read before eviction or expiry"),
        ("edge_warms_issued", "Edge warms the clients carried out"),
        ("edge_warms_written", "Values warmed at the edge"),
        ("edge_warms_useful", "Values warmed at the edge and read before eviction or expiry"),
        ("joined_reads", "Reads that waited for a load in flight instead of fetching"),
        ("dead_letters", "Records sent to the dead-letter topic"),
    )

    def collect(self) -> Iterator[Any]:
        views = namespace_stats()
        for name, text in self._COUNTERS:
            family = CounterMetricFamily(f"cachecast_{name}", text, labels=["namespace"])
            for ns, view in views.items():
                family.add_metric([ns], float(getattr(view["counters"], name)))
            yield family
        ratio = GaugeMetricFamily(
            "cachecast_hit_ratio", "Hit ratio, all time", labels=["namespace"]
        )
        precision = GaugeMetricFamily(
            "cachecast_warm_precision",
            "Useful warms / written warms, worker path",
            labels=["namespace"],
        )
        edge_precision = GaugeMetricFamily(
            "cachecast_edge_warm_precision",
            "Useful warms / written warms, edge path",
            labels=["namespace"],
        )
        latency = GaugeMetricFamily(
            "cachecast_latency_us",
            "Operation latency quantiles in the open window",
            labels=["namespace", "quantile"],
        )
        for ns, view in views.items():
            total, window = view["total"], view["window"]
            if total["hit_ratio"] is not None:
                ratio.add_metric([ns], total["hit_ratio"])
            if total["warm_precision"] is not None:
                precision.add_metric([ns], total["warm_precision"])
            if total["edge_warm_precision"] is not None:
                edge_precision.add_metric([ns], total["edge_warm_precision"])
            for q in ("50", "90", "99"):
                latency.add_metric([ns, f"0.{q}"], window[f"latency_p{q}_us"])
        yield ratio
        yield precision
        yield edge_precision
        yield latency
        worker = CounterMetricFamily(
            "cachecast_worker_events", "Worker counters by kind", labels=["kind"]
        )
        for kind, value in runtime.counters.items():
            worker.add_metric([kind], float(value))
        yield worker


setup_prometheus_sensors(app, pattern="/metrics", name_prefix="cachecast_faust")
REGISTRY.register(StatsCollector())
