"""Create cachecast's topics before workers start (idempotent).

A consumer that subscribes before its topic exists may never see it (observed
with Faust on a fresh broker), so the worker command creates every topic first,
with the configured partition counts; existing topics are left as they are.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pipeline.config import Settings
from pipeline.transport import kafka_options

__all__ = [
    "STATE_MAX_MESSAGE_BYTES",
    "STATE_TOPIC_CONFIG",
    "VIEW_TOPIC_CONFIG",
    "ensure_topics",
    "topic_specs",
]

log = logging.getLogger(__name__)


STATE_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""The largest model snapshot the state topic takes (the broker's default is 1 MiB)."""

STATE_TOPIC_CONFIG: Final = {
    "cleanup.policy": "compact",
    "segment.ms": "60000",
    "max.message.bytes": str(STATE_MAX_MESSAGE_BYTES),
}


VIEW_TOPIC_CONFIG: Final = {"cleanup.policy": "compact", "segment.ms": "60000"}
"""The stats view keeps the latest record of each namespace."""


def topic_specs(settings: Settings) -> list[NewTopic]:
    """Every topic with its partitions, replication factor and config."""
    parts = settings.topic_partitions
    replicas = settings.topic_replication
    names = [
        settings.topic_access,
        settings.topic_sequence,
        settings.topic_warmup,
        settings.topic_outcomes,
        settings.topic_stats,
        settings.topic_metrics,
        settings.topic_dead_letter,
    ]
    specs = [NewTopic(name, parts, replicas) for name in names]
    specs.append(
        NewTopic(settings.topic_state, parts, replicas, topic_configs=dict(STATE_TOPIC_CONFIG))
    )
    specs.append(
        NewTopic(settings.topic_stats_view, parts, replicas, topic_configs=dict(VIEW_TOPIC_CONFIG))
    )
    return specs


async def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the missing topics; returns the names created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_brokers(),
        request_timeout_ms=int(timeout * 1000),
        **kafka_options(settings),
    )
    await asyncio.wait_for(admin.start(), timeout)
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topic_specs(settings) if t.name not in existing]
        if not wanted:
            return []
        try:
            await admin.create_topics(wanted, timeout_ms=int(timeout * 1000))
        except TopicAlreadyExistsError:
            log.debug("topics were created concurrently")
        return [t.name for t in wanted]
    finally:
        await admin.close()
