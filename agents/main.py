"""``create_app(settings)``: one worker's Faust app with every agent, timer and view.

Nothing is built at import: the CLI (``cachecast worker``) loads the settings,
applies its flags to them and calls :func:`create_app`; a test builds an app
from its own settings, with Redis or the topics replaced, and drives an agent
in Faust's test context (``worker.observe.agent.test_context()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from agents.app import Context
from agents.observe import Observe
from agents.predict import Predict
from agents.runtime import Runtime
from agents.stats import Stats
from agents.web import Web
from agents.writer import Writer
from pipeline.client.connection import AsyncRedisClient
from pipeline.config import Settings

__all__ = ["CachecastApp", "create_app"]


@dataclass(frozen=True)
class CachecastApp:
    """One worker: the Faust app (``app.main()`` runs it) and each agent's state."""

    context: Context
    runtime: Runtime
    observe: Observe
    writer: Writer
    predict: Predict
    stats: Stats
    web: Web

    @property
    def app(self) -> faust.App:
        return self.context.app

    @property
    def settings(self) -> Settings:
        return self.context.settings


def create_app(settings: Settings, *, redis: AsyncRedisClient | None = None) -> CachecastApp:
    """Build a worker from ``settings``: topics declared, agents registered, no I/O yet.

    ``redis`` replaces the worker's own Redis client (made from the settings,
    connected on first use).
    """
    context = Context(settings)
    runtime = Runtime(context, redis=redis)
    observe = Observe(context, runtime)
    writer = Writer(context, runtime)
    predict = Predict(context, runtime, writer)
    stats = Stats(context, runtime)
    web = Web(context, runtime, predict, stats, writer)
    return CachecastApp(context, runtime, observe, writer, predict, stats, web)
