"""HTTP: /api/cache/monitor (JSON), /dashboard (HTML), /metrics (Prometheus).

The monitor and the dashboard of any worker answer for every namespace of the
cluster (its own live, the others from the stats-view topic); /metrics exports
only the namespaces whose stats partitions this worker owns, so scrape each
worker (Prometheus does this naturally) or read the metrics topic, which
carries every namespace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import faust
import orjson
from faust.exceptions import ConsumerNotStarted
from faust.web import Request, Response, View
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from agents.app import Context
from agents.predict import Predict
from agents.runtime import Runtime
from agents.stats import Stats
from agents.writer import Writer
from pipeline.build_native import compiled_state
from pipeline.client import CacheError, RedisCacheManager, RedisConfigError
from pipeline.histogram import LatencyHistogram
from pipeline.monitor import (
    MAX_BODY_BYTES,
    Action,
    ApiError,
    check_token,
    parse_action,
    parse_view,
)
from schemas.contracts import STRATEGIES
from schemas.decode import validate_warmup_command

log = logging.getLogger(__name__)

__all__ = ["DashboardView", "MetricsView", "MonitorView", "Web"]


#: "compiled" or "pure": whether the models run as mypyc extensions (about twice as fast).
_HOT_MODULES: Final = compiled_state()

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
#: How often the memory view's key count under the prefix is refreshed (a SCAN pass).
_PREFIX_COUNT_EVERY_S: Final = 30.0
_INSIGHTS_PER_NAMESPACE: Final = 10


class Web:
    """The HTTP views of one worker, over its agents' state; and its loop-stall watch."""

    def __init__(
        self,
        context: Context,
        runtime: Runtime,
        predict: Predict,
        stats: Stats,
        writer: Writer,
    ) -> None:
        self.context = context
        self.settings = context.settings
        self.runtime = runtime
        self.predict = predict
        self.stats = stats
        self.writer = writer
        self._info_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._manager: RedisCacheManager | None = None
        #: What /metrics exports: this worker's collector and the process's own figures.
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.registry.register(StatsCollector(self))
        app = context.app
        for path, view in (
            ("/api/cache/monitor", MonitorView),
            ("/dashboard", DashboardView),
            ("/metrics", MetricsView),
        ):
            app.page(path)(type(view.__name__, (view,), {"owner": self}))
        app.task(self.watch_event_loop)
        app.timer(interval=_INFO_TTL_S, name="cachecast.redis-info")(self.refresh_redis_info)

    def monitor_document(self) -> dict[str, Any]:
        """What /api/cache/monitor answers."""
        settings, runtime, app = self.settings, self.runtime, self.context.app
        namespaces = {
            ns: {"window": view["window"], "total": view["total"], "owner": view["worker"]}
            for ns, view in self.stats.namespace_stats().items()
        }
        return {
            "worker": self.context.name,
            "uptime_s": round(time.time() - runtime.started_at, 3),
            "window_s": settings.stats_window_s,
            "warming_enabled": settings.warming_enabled,
            "hot_modules": _HOT_MODULES,
            "assigned_partitions": _assigned(app),
            "rebalancing": bool(app.rebalancing),
            "counters": dict(runtime.counters),
            "consume_lag": runtime.lag_summary(),
            "checkpoints": {c.stage: c.describe() for c in self.context.checkpointers},
            "models": {
                str(p): engine.stats() for p, engine in sorted(self.predict.engines.models.items())
            },
            "lookahead": self._lookahead(),
            "reorder": self._reorder(),
            "namespaces": namespaces,
        }

    def _reorder(self) -> dict[str, Any]:
        """Events that reached predict after newer ones were learnt, and the hold that adapts."""
        buffers = list(self.predict.reorderers.values())
        default = self.settings.reorder_s
        return {
            "late_events": sum(r.late for r in buffers),
            "held_events": sum(len(r) for r in buffers),
            "hold_ms": round(max((r.delay for r in buffers), default=default) * 1000, 1),
        }

    def _lookahead(self) -> dict[str, Any]:
        """How far ahead each partition predicts, and the measurements that set it."""
        latency = self.runtime.warm_latency
        out: dict[str, Any] = {
            "auto": self.settings.model_auto_lookahead,
            "warm_latency_p50_ms": _ms(latency.quantile(0.5)),
            "warm_latency_p90_ms": _ms(latency.quantile(0.9)),
            "warms_measured": len(latency),
        }
        for partition, found in sorted(self.predict.deciders.items()):
            if found.tuner is not None:
                out[str(partition)] = {
                    "rate_per_s": round(found.tuner.rate, 1),
                    "lead_requests": found.tuner.lead,
                    "delay_requests": found.tuner.delay,
                }
        return out

    def model_insights(
        self, per_namespace: int = _INSIGHTS_PER_NAMESPACE
    ) -> dict[str, dict[str, Any]]:
        """What this worker's models see, per namespace: the hottest keys and their rhythm,
        and the keys they expect to be read next.

        ``hottest``: decayed access counts, with the typical gap between two reads
        (in requests of the partition: the engines run on a request clock) when the
        key has a rhythm. ``predicted``: admitted candidates awaiting their label,
        with their calibrated probability. Only this worker's partitions (the models
        are not shared between workers).
        """
        found: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for engine in list(self.predict.engines.models.values()):
            for full, weight in engine.frequency.most_common(per_namespace * 5):
                namespace, _, key = str(full).partition(":")
                rhythm = engine.recency.rhythm(full)
                found.setdefault(namespace, {"hottest": [], "predicted": []})["hottest"].append(
                    {
                        "key": key,
                        "weight": round(weight, 2),
                        "typical_gap_requests": (
                            round(rhythm.typical_gap, 1) if rhythm and rhythm.n_gaps else None
                        ),
                    }
                )
            for full, probability in engine.scorer.top_admitted(per_namespace * 5):
                namespace, _, key = str(full).partition(":")
                found.setdefault(namespace, {"hottest": [], "predicted": []})["predicted"].append(
                    {"key": key, "probability": round(probability, 3)}
                )
        out: dict[str, dict[str, Any]] = {}
        for namespace, lists in found.items():
            hottest = sorted(lists["hottest"], key=lambda item: -item["weight"])
            predicted = sorted(lists["predicted"], key=lambda item: -item["probability"])
            out[namespace] = {
                "hottest": hottest[:per_namespace],
                "predicted": predicted[:per_namespace],
            }
        return out

    async def watch_event_loop(self) -> None:
        """Measure how late the event loop runs a 50 ms sleep: every stall delays every
        agent."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.05)
            self.runtime.loop_stall.add(max(0.0, time.perf_counter() - started - 0.05) * 1e6)

    def manager(self) -> RedisCacheManager:
        """The cache API over the worker's own Redis client (no second connection pool)."""
        if self._manager is None:
            self._manager = RedisCacheManager(self.settings, redis=self.runtime.redis)
        return self._manager

    async def redis_info(self) -> dict[str, Any]:
        """Redis memory, evictions and reachability (cached for a few seconds)."""
        cache = self._info_cache
        cached = cache.get("info")
        if cached is not None and time.monotonic() - cached[0] < _INFO_TTL_S:
            return cached[1]
        manager = self.manager()
        try:
            stats = (await manager.get_stats())["redis"]
            health = await manager.health_check()
        except Exception as exc:  # Redis down: say so, do not fail the view
            stats, health = {}, {"healthy": False, "latency_ms": None, "error": repr(exc)}
        previous = cache.get("prefix")
        prefix_keys = previous[1] if previous is not None else None
        if health.get("healthy") and (
            previous is None or time.monotonic() - previous[0] >= _PREFIX_COUNT_EVERY_S
        ):
            try:  # a SCAN pass: not at every view
                prefix_keys = await manager.count_keys()
                cache["prefix"] = (time.monotonic(), prefix_keys)
            except Exception as exc:
                log.warning("counting the keys under the prefix failed: %r", exc)
        found = {"stats": stats, "health": health, "prefix_keys": prefix_keys}
        cache["info"] = (time.monotonic(), found)
        return found

    def last_redis_info(self) -> dict[str, Any]:
        """The Redis figures of the last check (empty before the first)."""
        cached = self._info_cache.get("info")
        return cached[1] if cached is not None else {}

    async def refresh_redis_info(self) -> None:
        """Keep the Redis figures of /metrics fresh (a scrape must not wait on Redis)."""
        await self.redis_info()

    async def monitor_view(self, view: str) -> dict[str, Any]:
        """One ``?type=`` view of the monitor (``all``: the whole document plus Redis)."""
        doc = self.monitor_document()
        namespaces: dict[str, Any] = doc["namespaces"]
        redis = await self.redis_info() if view in ("all", "basic", "memory", "health") else {}
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
                    "throughput_per_s": (
                        round(v["window"]["events"] / window, 2) if window else None
                    ),
                }
                for ns, v in namespaces.items()
            }
            out["consume_lag"] = doc["consume_lag"]
            out["lookahead"] = doc["lookahead"]
        elif view == "memory":
            out["redis"] = stats.get("memory")
            out["keyspace"] = stats.get("keyspace")
            out["prefix_keys"] = redis.get("prefix_keys")
            out["namespaces"] = {
                ns: {"compression_ratio": v["total"].get("compression_ratio")}
                for ns, v in namespaces.items()
            }
        elif view == "intelligent":
            out["namespaces"] = _pick(namespaces, _INTELLIGENT)
            for ns, view_of in namespaces.items():  # each strategy's labelled warms
                total = view_of["total"]
                out["namespaces"][ns]["strategies"] = {
                    name: {
                        "admitted": total.get(f"{name}_admitted"),
                        "precision": total.get(f"{name}_precision"),
                    }
                    for name in STRATEGIES
                }
            out["models"] = doc["models"]
            out["insights"] = self.model_insights()
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
            out["last_event_age_s"] = self.runtime.last_event_age()
        return out

    async def run_action(self, action: Action) -> dict[str, Any]:
        """Carry out a validated action; what it did, for the caller and the log."""
        manager = self.manager()
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
                    "ttl": self.settings.redis_default_ttl,
                    "deadline": now + 60.0,
                    "issued_at": now,
                    "model_version": "monitor-api",
                }
            )
            for key in action.params["keys"]
        ]
        outcomes = await self.writer.carry_out(commands)
        return {
            "keys": {o["key"]: {"status": o["status"], "error": o.get("error")} for o in outcomes}
        }


def _assigned(app: faust.App) -> int:
    """Partitions the worker holds: 0 until its consumer has started."""
    try:
        return len(app.consumer.assignment())
    except ConsumerNotStarted:
        return 0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _pick(namespaces: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {ns: {n: view["total"].get(n) for n in names} for ns, view in namespaces.items()}


class MonitorView(View):
    """/api/cache/monitor: GET a view (``?type=``), POST an action (bearer token)."""

    owner: Web

    async def get(self, request: Request) -> Response:
        try:
            view = parse_view(request.query.get("type"))
        except ApiError as exc:
            return self.json({"error": exc.message}, status=exc.status)
        return self.json(await self.owner.monitor_view(view))

    async def post(self, request: Request) -> Response:
        settings = self.owner.settings
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
            result = await self.owner.run_action(action)
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


#: The dashboard: one self-contained page (no CDN: it works offline), text only.
_DASHBOARD: Final = (Path(__file__).parent / "dashboard.html").read_text(encoding="utf-8")


class DashboardView(View):
    owner: Web

    async def get(self, request: Request) -> Response:
        return self.html(_DASHBOARD)


class MetricsView(View):
    owner: Web

    async def get(self, request: Request) -> Response:
        # aiohttp refuses a charset inside content_type: the header carries it whole.
        return self.bytes(
            generate_latest(self.owner.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


#: Latency buckets of the exported histograms, in seconds (100 µs .. 10 s).
_BUCKETS_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BUCKETS_US: Final = [b * 1e6 for b in _BUCKETS_S]


def _histogram(family: HistogramMetricFamily, labels: list[str], hist: LatencyHistogram) -> None:
    """Add a microsecond log-bucket histogram to ``family`` in seconds, cumulative buckets."""
    counts, total_us = hist.cumulative(_BUCKETS_US)
    buckets = [(repr(bound), float(n)) for bound, n in zip(_BUCKETS_S, counts, strict=True)]
    buckets.append(("+Inf", float(hist.count)))
    family.add_metric(labels, buckets, total_us / 1e6)


class StatsCollector(Collector):
    """The stats table (all time, per namespace), the worker and Redis, at scrape time.

    Names follow Prometheus's conventions (``promtool check metrics`` is clean, a
    test checks it): base units (seconds, bytes), ``_total`` counters, latencies
    as histograms. The warm counters carry ``path`` (``worker`` or ``edge``).
    """

    _COUNTERS = (
        ("events", "Access events"),
        ("hits", "Reads that hit"),
        ("misses", "Reads that missed"),
        ("sets", "Writes"),
        ("deletes", "Deletes"),
        ("errors", "Operations that failed in Redis"),
        ("joined_reads", "Reads that waited for a load in flight instead of fetching"),
        ("dead_letters", "Records sent to the dead-letter topic"),
    )
    _WARMS = (
        ("issued", "Warms decided: warmup commands of the worker, loads of the clients"),
        ("written", "Warmed values written to Redis"),
        ("useful", "Warmed values read before they were evicted or expired"),
    )

    def __init__(self, web: Web) -> None:
        self.web = web

    def collect(self) -> Iterator[Any]:
        runtime = self.web.runtime
        # This worker's namespaces only: scraping every worker counts each once.
        views = self.web.stats.namespace_stats(local_only=True)
        for name, text in self._COUNTERS:
            family = CounterMetricFamily(f"cachecast_{name}", text, labels=["namespace"])
            for ns, view in views.items():
                family.add_metric([ns], float(getattr(view["counters"], name)))
            yield family
        for name, text in self._WARMS:
            family = CounterMetricFamily(
                f"cachecast_warms_{name}", text, labels=["namespace", "path"]
            )
            for ns, view in views.items():
                counters = view["counters"]
                family.add_metric([ns, "worker"], float(getattr(counters, f"warms_{name}")))
                family.add_metric([ns, "edge"], float(getattr(counters, f"edge_warms_{name}")))
            yield family
        strategies = CounterMetricFamily(
            "cachecast_strategy_admitted",
            "Admitted predictions labelled, by the strategy that raised them (worker reasons,"
            " issued as warms or not; rules: the successors the prefetch rules named) and"
            " outcome: useful (read in time), wasted",
            labels=["namespace", "strategy", "outcome"],
        )
        for ns, view in views.items():
            counters = view["counters"]
            for name in STRATEGIES:
                strategies.add_metric(
                    [ns, name, "useful"], float(getattr(counters, f"{name}_true"))
                )
                strategies.add_metric(
                    [ns, name, "wasted"], float(getattr(counters, f"{name}_false"))
                )
        yield strategies
        predictions = CounterMetricFamily(
            "cachecast_predictions",
            "Labelled predictions of the models: true_positive (admitted, read in time), "
            "false_positive (admitted, not read), false_negative (read, not admitted)",
            labels=["namespace", "outcome"],
        )
        ratio = GaugeMetricFamily(
            "cachecast_hit_ratio", "Hit ratio, all time", labels=["namespace"]
        )
        precision = GaugeMetricFamily(
            "cachecast_warm_precision",
            "Useful warms / written warms, by path",
            labels=["namespace", "path"],
        )
        quality = GaugeMetricFamily(
            "cachecast_prediction_quality",
            "Precision and recall of the models' predictions, all time",
            labels=["namespace", "measure"],
        )
        latency = HistogramMetricFamily(
            "cachecast_operation_latency_seconds",
            "Cache operation latency seen by the clients, all time",
            labels=["namespace"],
        )
        warm_latency = HistogramMetricFamily(
            "cachecast_warm_latency_seconds",
            "Trigger to warmed value written, all time",
            labels=["namespace"],
        )
        for ns, view in views.items():
            total, counters = view["total"], view["counters"]
            predictions.add_metric([ns, "true_positive"], float(counters.predicted_true))
            predictions.add_metric([ns, "false_positive"], float(counters.predicted_false))
            predictions.add_metric([ns, "false_negative"], float(counters.missed_true))
            if total["hit_ratio"] is not None:
                ratio.add_metric([ns], total["hit_ratio"])
            for path, key in (("worker", "warm_precision"), ("edge", "edge_warm_precision")):
                if total[key] is not None:
                    precision.add_metric([ns, path], total[key])
            for measure in ("precision", "recall"):
                if total[f"prediction_{measure}"] is not None:
                    quality.add_metric([ns, measure], total[f"prediction_{measure}"])
            _histogram(latency, [ns], counters.latency)
            _histogram(warm_latency, [ns], counters.warm_latency)
        yield from (predictions, ratio, precision, quality, latency, warm_latency)
        worker = CounterMetricFamily(
            "cachecast_worker_events", "Worker counters by kind", labels=["kind"]
        )
        for kind, value in runtime.counters.items():
            worker.add_metric([kind], float(value))
        yield worker
        lag = HistogramMetricFamily(
            "cachecast_consume_lag_seconds",
            "Record timestamp to processing, by agent",
            labels=["agent"],
        )
        for agent, hist in sorted(runtime.consume_lag.items()):
            _histogram(lag, [agent], hist)
        yield lag
        stall = HistogramMetricFamily(
            "cachecast_event_loop_stall_seconds", "How late the event loop ran a 50 ms sleep"
        )
        _histogram(stall, [], runtime.loop_stall)
        yield stall
        yield from self._redis()
        yield from self._faust()

    def _redis(self) -> Iterator[Any]:
        """Redis figures from the last INFO (refreshed every few seconds by a timer)."""
        info = self.web.last_redis_info()
        health = info.get("health") or {}
        up = GaugeMetricFamily("cachecast_redis_up", "1 when Redis answered the last check")
        up.add_metric([], 1.0 if health.get("healthy") else 0.0)
        yield up
        stats = info.get("stats") or {}
        memory = stats.get("memory") or {}
        for name, key, text in (
            ("used", "used_memory", "Memory Redis uses"),
            ("max", "maxmemory", "Redis's maxmemory (0: unlimited)"),
        ):
            if memory.get(key) is not None:
                gauge = GaugeMetricFamily(f"cachecast_redis_memory_{name}_bytes", text)
                gauge.add_metric([], float(memory[key]))
                yield gauge
        if stats.get("evictions") is not None:
            evicted = CounterMetricFamily(
                "cachecast_redis_evicted_keys", "Keys Redis evicted under its maxmemory"
            )
            evicted.add_metric([], float(stats["evictions"]))
            yield evicted

    def _faust(self) -> Iterator[Any]:
        """Faust's own monitor, in base units."""
        monitor = self.web.context.app.monitor
        for name, value, text in (
            ("messages_received", monitor.messages_received_total, "Records consumed"),
            ("messages_sent", monitor.messages_sent, "Records produced"),
            ("events", monitor.events_total, "Stream events processed"),
        ):
            counter = CounterMetricFamily(f"cachecast_faust_{name}", text)
            counter.add_metric([], float(value))
            yield counter
        for name, samples, text in (
            ("event_runtime", monitor.events_runtime, "Stream event processing time"),
            ("commit_latency", monitor.commit_latency, "Offset commit latency"),
            ("send_latency", monitor.send_latency, "Producer send latency"),
        ):
            recent = list(samples or ())
            gauge = GaugeMetricFamily(
                f"cachecast_faust_{name}_seconds", f"{text}, mean of the last {len(recent)}"
            )
            gauge.add_metric([], sum(recent) / len(recent) if recent else 0.0)
            yield gauge
