"""Import every agent, table, timer and view, and expose the app: ``faust -A agents.main``."""

from __future__ import annotations

from agents import observe, predict, stats, web, writer
from agents.app import app

__all__ = ["app", "observe", "predict", "stats", "web", "writer"]
