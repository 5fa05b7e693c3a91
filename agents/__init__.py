"""Faust agents: thin wiring of pipeline pieces to Kafka topics; :func:`create_app` builds
one worker's app from its settings."""

from agents.main import CachecastApp, create_app

__all__ = ["CachecastApp", "create_app"]
