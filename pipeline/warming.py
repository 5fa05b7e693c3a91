"""The Redis writer: carries out warmup commands, safely and idempotently.

For each command, in order of cheapness:

1. past its deadline -> ``skipped-stale`` (a late warm is worth nothing);
2. the key is already in Redis -> ``skipped-present`` (one pipelined EXISTS per
   batch, which also reads each key's smart TTL as published by the observe
   agent; it replaces the command's TTL when present);
3. the namespace's guarded loader refuses (rate, concurrency, open circuit)
   -> ``rate-limited``; the loader fails -> ``load-failed``;
4. otherwise the value is written with SET NX EX in the codec envelope marked
   ``origin=warm`` (plus the first-read marker) -> ``written``, or
   ``skipped-present`` when the application wrote the key meanwhile: a warm
   never overwrites a value.

Delivery is at-least-once, and every step is idempotent: a redelivered command
finds the key present or the deadline passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from pipeline.client.keys import data_key, smart_ttl_hash
from pipeline.client.warm import write_warmed
from pipeline.codec import CodecError, ValueCodec
from pipeline.loaders import GuardedLoader, LoadError, LoadRefused
from pipeline.ttl import published_ttl, warm_ttl
from schemas.contracts import MAX_TTL_S

__all__ = ["WarmWriter"]

log = logging.getLogger(__name__)

AnyRedis = Redis | RedisCluster


class WarmWriter:
    """Turns WarmupCommand dicts into writes and WarmupOutcome dicts.

    Parameters
    ----------
    redis
        An asyncio Redis or RedisCluster client.
    prefix
        The key prefix (``REDIS_KEY_PREFIX``).
    loaders
        Guarded loader per namespace; a namespace without one gets ``load-failed``.
    codec
        Encodes loaded values (origin ``warm``).
    ttl_bounds
        ``(CACHECAST_SMART_TTL_MIN, CACHECAST_SMART_TTL_MAX)``: a published smart TTL
        is clamped to them, as the clients clamp it.
    """

    def __init__(
        self,
        redis: AnyRedis,
        prefix: str,
        loaders: Mapping[str, GuardedLoader],
        codec: ValueCodec,
        *,
        ttl_bounds: tuple[int, int] = (1, MAX_TTL_S),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_bounds = ttl_bounds
        self.redis = redis
        self.prefix = prefix
        self.loaders = dict(loaders)
        self.codec = codec
        self.clock = clock

    async def apply(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Carry out a batch of validated commands; one outcome per command, same order."""
        outcomes: list[dict[str, Any] | None] = [None] * len(commands)
        now = self.clock()
        todo: list[int] = []
        seen: set[tuple[str, str]] = set()
        for i, command in enumerate(commands):
            ident = (command["namespace"], command["key"])
            if command["deadline"] < now:
                outcomes[i] = self._outcome(command, "skipped-stale", now)
            elif ident in seen:
                outcomes[i] = self._outcome(command, "skipped-present", now)
            else:
                seen.add(ident)
                todo.append(i)
        present = await self._present([commands[i] for i in todo])
        load: list[tuple[int, int]] = []
        for i, (is_present, smart_ttl) in zip(todo, present, strict=True):
            if is_present:
                outcomes[i] = self._outcome(commands[i], "skipped-present", self.clock())
            else:
                load.append((i, warm_ttl(smart_ttl, commands[i]["ttl"])))
        results = await asyncio.gather(*(self._warm_one(commands[i], ttl) for i, ttl in load))
        for (i, _), outcome in zip(load, results, strict=True):
            outcomes[i] = outcome
        return [o for o in outcomes if o is not None]

    async def _present(
        self, commands: Sequence[Mapping[str, Any]]
    ) -> list[tuple[bool, int | None]]:
        """(already cached?, published smart TTL or None) per command."""
        if not commands:
            return []
        prefix = self.prefix
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in commands:
                pipe.exists(data_key(prefix, c["namespace"], c["key"]))
                pipe.hget(smart_ttl_hash(prefix, c["namespace"]), c["key"])
            replies = await pipe.execute()
        low, high = self.ttl_bounds
        return [
            (bool(replies[j]), published_ttl(replies[j + 1], low, high))
            for j in range(0, len(replies), 2)
        ]

    async def _warm_one(self, command: Mapping[str, Any], ttl: int) -> dict[str, Any]:
        namespace, key = command["namespace"], command["key"]
        loader = self.loaders.get(namespace)
        if loader is None:
            return self._outcome(
                command, "load-failed", self.clock(), error=f"no loader for namespace {namespace!r}"
            )
        started = self.clock()
        wait = max(0.0, command["deadline"] - started)
        try:
            value = await loader.load(namespace, key, wait=min(wait, loader.config.timeout))
        except LoadRefused as exc:
            return self._outcome(command, "rate-limited", self.clock(), error=str(exc))
        except LoadError as exc:
            return self._outcome(command, "load-failed", self.clock(), error=str(exc))
        loaded = self.clock()
        load_us = (loaded - started) * 1e6
        if loaded > command["deadline"]:
            return self._outcome(command, "skipped-stale", loaded, load_us=load_us)
        try:
            encoded = self.codec.encode(value, origin="warm", now=loaded)
        except CodecError as exc:
            return self._outcome(command, "load-failed", loaded, error=str(exc), load_us=load_us)
        try:
            written = await write_warmed(self.redis, self.prefix, namespace, key, encoded.data, ttl)
        except Exception as exc:  # Redis down: the warm failed, the worker goes on
            log.warning("warm write of %s:%s failed: %s", namespace, key, exc)
            return self._outcome(
                command, "load-failed", self.clock(), error=f"redis: {exc}", load_us=load_us
            )
        done = self.clock()
        if not written:
            return self._outcome(command, "skipped-present", done, load_us=load_us)
        return self._outcome(
            command, "written", done, load_us=load_us, size_bytes=len(encoded.data), ttl=ttl
        )

    @staticmethod
    def _outcome(
        command: Mapping[str, Any],
        status: str,
        now: float,
        *,
        error: str | None = None,
        load_us: float = 0.0,
        size_bytes: int = 0,
        ttl: int | None = None,
    ) -> dict[str, Any]:
        since = command.get("trigger_ts") or command.get("issued_at") or now
        return {
            "namespace": command["namespace"],
            "key": command["key"],
            "status": status,
            "ts": now,
            "reason": command["reason"],
            "latency_us": min(max(0.0, (now - since) * 1e6), 3.6e9),
            "load_us": min(load_us, 3.6e9),
            "size_bytes": size_bytes,
            "ttl": ttl,
            "error": error[:256] if error else None,
            "model_version": command.get("model_version", ""),
            "version": 1,
        }
