"""One settings object for the whole of cachecast.

Every knob is read from the environment (or passed in code), validated once at
start-up, and documented here: its type, its default and its variable name.
The Redis names are the ones the original TypeScript cache layer used, so an
existing deployment's environment keeps working.

>>> s = Settings(redis_port=6380, kafka_bootstrap_servers="k1:9092,k2:9092")
>>> s.redis_port, s.kafka_brokers()
(6380, ['k1:9092', 'k2:9092'])
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

from pydantic import (
    AliasChoices,
    AliasGenerator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "CACHE_CONFIG_NAMES",
    "MEMORY_POLICIES",
    "ConfigError",
    "Settings",
    "cache_root",
    "cache_settings",
    "load_settings",
    "parse_memory_size",
]

#: Redis's eviction policies (``maxmemory-policy``), for the client's configure_redis
#: and the devstack's servers.
MEMORY_POLICIES: Final = (
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)

_MEMORY_RE = re.compile(r"^\s*(\d+)\s*(b|k|kb|m|mb|g|gb)?\s*$", re.IGNORECASE)
_MEMORY_UNITS = {
    None: 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


_TOPIC_ROLES = {
    "topic_access": "access",
    "topic_warmup": "warmup",
    "topic_outcomes": "outcomes",
    "topic_metrics": "metrics",
    "topic_dead_letter": "dead-letter",
    "topic_state": "model-state",
    "topic_stats": "stats-deltas",
    "topic_stats_view": "stats-view",
    "topic_sequence": "access-by-session",
}


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the environment variable."""


def parse_memory_size(value: str) -> int:
    """Parse a Redis-style memory size ("256mb", "1gb", "100000") into bytes.

    Units follow redis.conf: ``k``/``m``/``g`` are powers of 1000,
    ``kb``/``mb``/``gb`` powers of 1024.

    >>> parse_memory_size("256mb")
    268435456
    >>> parse_memory_size("2g")
    2000000000
    """
    match = _MEMORY_RE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a memory size such as '256mb', '1gb' or '1048576'")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _MEMORY_UNITS[unit]


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def env_name(field: str) -> str:
    """A setting's environment variable, unless its field names another one.

    The original cache layer's ``redis_*`` and ``kafka_*`` settings keep their
    names in capitals; every other setting is ``CACHECAST_`` and its name.

    >>> env_name("redis_host"), env_name("rules_interval_s")
    ('REDIS_HOST', 'CACHECAST_RULES_INTERVAL_S')
    """
    prefix = "" if field.startswith(("redis_", "kafka_")) else "CACHECAST_"
    return prefix + field.upper()


def _aliases(field: str) -> AliasChoices:
    """A field is read from its environment variable, or by its own name."""
    return _env(env_name(field), field)


class Settings(BaseSettings):
    """cachecast settings, each read from its environment variable (:func:`env_name`,
    or the one its field names) or given by name."""

    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
        alias_generator=AliasGenerator(validation_alias=_aliases),
    )

    # --- Redis (the original cache layer's names) -------------------------------------------------
    redis_host: str = "127.0.0.1"
    redis_port: int = Field(
        6379,
        ge=1,
        le=65535,
    )
    redis_password: SecretStr | None = Field(
        None,
        description="Never shown in logs or reprs (a SecretStr).",
    )
    redis_db: int = Field(
        0,
        ge=0,
        le=15,
    )
    redis_key_prefix: str = Field(
        "cache:",
        max_length=64,
        description="Prepended to every key: prefix + namespace + ':' + key.",
    )
    redis_default_ttl: int = Field(
        3600,
        ge=1,
        le=365 * 24 * 3600,
        description="Seconds; used when neither the caller nor the smart TTL gives one.",
    )
    redis_max_memory: str | None = Field(
        None,
        description="Redis maxmemory to apply with configure_redis, e.g. '256mb'.",
    )
    redis_compression_threshold: int = Field(
        1024,
        ge=0,
        description="Payloads of at least this many bytes are lz4-compressed.",
    )
    redis_enable_compression: bool = True
    redis_enable_clustering: bool = False
    redis_cluster_nodes: str = Field(
        "",
        description="Comma-separated host:port startup nodes when clustering is on.",
    )
    redis_retry_delay_ms: float = Field(
        100,
        gt=0,
        le=60_000,
        validation_alias=_env("REDIS_RETRY_DELAY", "redis_retry_delay_ms"),
        description="Base delay in milliseconds for exponential backoff between retries.",
    )
    redis_max_retries: int = Field(
        3,
        ge=0,
        le=20,
    )
    redis_socket_timeout: float = Field(
        1.0,
        gt=0,
        le=60,
    )
    redis_username: str | None = Field(
        None,
        description="Redis ACL user (with REDIS_PASSWORD); unset: the default user.",
    )
    redis_tls: bool = Field(
        False,
        description="Connect to Redis over TLS (rediss).",
    )
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    redis_tls_check_hostname: bool = True

    # --- Kafka ------------------------------------------------------------------
    topic_namespace: str = Field(
        "cachecast",
        pattern=r"^[A-Za-z0-9._-]{1,200}$",
        description="Topics not named explicitly are called '<namespace>.<role>'.",
    )
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How every Kafka client of cachecast connects (Faust, emitter, admin...).",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = Field(
        None,
        description="Never shown in logs or reprs (a SecretStr).",
    )
    kafka_ssl_ca_file: str | None = None
    kafka_ssl_cert_file: str | None = None
    kafka_ssl_key_file: str | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    topic_access: str = ""
    topic_warmup: str = ""
    topic_outcomes: str = ""
    topic_metrics: str = ""
    topic_dead_letter: str = ""
    topic_partitions: int = Field(
        4,
        ge=1,
        le=1024,
    )
    topic_replication: int = Field(
        1,
        ge=1,
        le=16,
        description="Replication factor of the topics cachecast creates (1 for one broker;"
        " 3 in production).",
    )

    # --- Access-event emitter (client side) --------------------------------------
    emitter_enabled: bool = True
    emitter_sample_rate: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        validation_alias=_env("CACHECAST_SAMPLE_RATE", "emitter_sample_rate"),
        description="Fraction of cache operations that emit an access event.",
    )
    emitter_buffer_size: int = Field(
        100_000,
        ge=1,
        validation_alias=_env("CACHECAST_EMITTER_BUFFER", "emitter_buffer_size"),
        description="Events held in memory while Kafka is slow; the oldest are dropped.",
    )
    emitter_buffer_bytes: int = Field(
        32 * 1024 * 1024,
        ge=64 * 1024,
        description="Bytes of events held in memory (estimated); the oldest are dropped.",
    )
    emitter_batch_size: int = Field(
        500,
        ge=1,
        le=10_000,
        validation_alias=_env("CACHECAST_EMITTER_BATCH", "emitter_batch_size"),
        description="Events per Kafka record (a JSON array).",
    )
    emitter_linger_ms: float = Field(
        20.0,
        ge=0,
        le=10_000,
        description="Longest an event waits for its batch to fill (emitter_min_batch).",
    )
    emitter_min_batch: int = Field(
        16,
        ge=1,
        le=10_000,
        description="Events that make a batch worth sending before the linger is up.",
    )
    client_name: str = Field(
        "cachecast",
        max_length=128,
    )

    # --- Models ------------------------------------------------------------------
    model_max_tracked_keys: int = Field(
        200_000,
        ge=16,
        validation_alias=_env("CACHECAST_MAX_TRACKED_KEYS", "model_max_tracked_keys"),
    )
    model_admission_threshold: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        validation_alias=_env("CACHECAST_ADMISSION_THRESHOLD", "model_admission_threshold"),
        description="Initial ensemble score a candidate needs to be warmed; the engine then"
        " steers it to keep wasted warms within budget.",
    )
    model_waste_budget: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        validation_alias=_env("CACHECAST_WASTE_BUDGET", "model_waste_budget"),
        description="Worker warms: wasted warms allowed per read the origin would serve with"
        " warming off (demand misses and reads warms saved); the admission threshold is"
        " steered to stay within it.",
    )
    model_rule_waste_budget: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        validation_alias=_env("CACHECAST_RULE_WASTE_BUDGET", "model_rule_waste_budget"),
        description="Prefetch rules (edge warms): wasted loads allowed per read the origin"
        " would serve with warming off; rules below the probability that fits are not"
        " published (never below 0.5). How much of it is spent depends on the traffic, see"
        " docs/DESIGN.md.",
    )
    model_wall_time: bool = Field(
        True,
        validation_alias=_env("CACHECAST_WALL_TIME", "model_wall_time"),
        description="Learn when in the day and the week each key is read, from the events'"
        " own timestamps, and warm keys shortly before their usual time.",
    )
    reorder_s: float = Field(
        0.01,
        ge=0,
        le=10,
        description="How long the predict agent holds events to restore their time order, at"
        " least: late events raise it, up to 0.5 s or this value if larger; 0 turns holding"
        " off.",
    )
    model_delay_requests: int = Field(
        30,
        ge=0,
        le=4096,
        validation_alias=_env("CACHECAST_DELAY_REQUESTS", "model_delay_requests"),
        description="Expected warm latency, in requests of one sequence: latency x request"
        " rate (e.g. 0.05 s x 600/s = 30). The models predict that much further ahead and"
        " judge themselves by what is requested after it, as the simulator's --delay does."
        " With CACHECAST_AUTO_LOOKAHEAD on, this is only the starting point.",
    )
    model_lead_requests: int = Field(
        0,
        ge=0,
        le=4096,
        validation_alias=_env("CACHECAST_LEAD_REQUESTS", "model_lead_requests"),
        description="Requests a warm takes to land, as the ensemble labels it: a candidate"
        " requested sooner is not counted for or against the model. With"
        " CACHECAST_AUTO_LOOKAHEAD on, this is only the starting point.",
    )
    model_auto_lookahead: bool = Field(
        False,
        validation_alias=_env("CACHECAST_AUTO_LOOKAHEAD", "model_auto_lookahead"),
        description="Experimental: retune the lead and the delay every few seconds from the"
        " measured warm latency (median and p90) x each partition's request rate, starting"
        " from the configured values. Measured to help at 400 requests/s and to diverge at"
        " 2,000/s (see docs/DESIGN.md).",
    )
    model_max_users: int = Field(
        0,
        ge=0,
        validation_alias=_env("CACHECAST_MAX_USERS", "model_max_users"),
        description="Most users each predict partition keeps for user affinity and similar"
        " users (0: CACHECAST_MAX_TRACKED_KEYS / 10; at least 4); past it, the quarter idle"
        " the longest is forgotten. Each costs up to 16 keys and their readers (about 4.6 KB)."
        " Changing it starts the partitions' models fresh.",
    )
    model_session_gap_s: float = Field(
        1800.0,
        gt=0,
        le=7 * 86_400,
        validation_alias=_env("CACHECAST_SESSION_GAP_S", "model_session_gap_s"),
        description="Silence, in seconds of the events' own time, after which a user's next"
        " read opens a new session: the moment their favourite keys and similar users' keys"
        " are raised. A replay that compresses a trace's time scales it down with it.",
    )
    smart_ttl_publish: bool = Field(
        True,
        validation_alias=_env("CACHECAST_PUBLISH_TTL", "smart_ttl_publish"),
        description="Publish learned TTLs to Redis for the client to use on a miss.",
    )
    smart_ttl_min: int = Field(
        30, ge=1, validation_alias=_env("CACHECAST_TTL_MIN", "smart_ttl_min")
    )
    smart_ttl_max: int = Field(
        86_400, ge=1, validation_alias=_env("CACHECAST_TTL_MAX", "smart_ttl_max")
    )
    seed: int = 0
    warm_deadline_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="A warmup command not carried out within this many seconds is stale.",
    )
    warm_dedup_s: float = Field(
        30.0,
        ge=0,
        description="A key warmed this recently is not warmed again.",
    )
    rules_publish: bool = Field(
        True,
        validation_alias=_env("CACHECAST_PREFETCH_RULES", "rules_publish"),
        description="Compile what the models learn into prefetch rules (trigger -> keys to"
        " load with it) and publish them to Redis, where clients apply them the moment a"
        " trigger misses. Off with CACHECAST_WARMING=false too.",
    )
    worker_sequences: bool = Field(
        False,
        description="With prefetch rules on, the worker also issues warmup commands for what"
        " the sequence models predict next. Off by default: the rules load those keys at the"
        " edge within milliseconds, while a warm through the worker lands tens of requests"
        " later; the worker keeps what it sees far ahead (rhythms, heavy hitters, time"
        " profiles).",
    )
    rules_interval_s: float = Field(
        0.1,
        gt=0,
        le=60,
        description="How often changed prefetch rules are published (a rule is worth the"
        " most right after its trigger's first recurrence).",
    )
    rules_max: int = Field(
        50_000,
        ge=1,
        description="Most prefetch rules one worker keeps published per namespace (the"
        " ones changed least recently go first).",
    )
    edge_warming: bool = Field(
        True,
        description="Client: when a key misses, load the keys its prefetch rule names in"
        " the background, through the namespace's loader (CACHECAST_LOADERS or"
        " register_loader).",
    )
    redis_read_line: bool = Field(
        True,
        validation_alias=_env("CACHECAST_REDIS_READ_LINE", "redis_read_line"),
        description="Client (asyncio, single server): send GETs pipelined on one"
        " connection of their own instead of through the pool (about 50 µs less per"
        " read here); off: every command uses the pool.",
    )
    redis_stall_ms: float = Field(
        200.0,
        ge=0,
        le=60_000,
        validation_alias=_env("CACHECAST_REDIS_STALL_MS", "redis_stall_ms"),
        description="Client: when reads have waited this long and Redis answered nothing,"
        " Redis is taken as hung and reads fail fast to their loader until it answers"
        " again (0: wait for the socket timeout). Lower it (50) where Redis has CPU of"
        " its own; on a machine it shares, a starved Redis pauses that long.",
    )
    load_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Client: the longest a get waits for fallback_data (or for another"
        " caller's load of the same key); then it raises LoadTimeoutError and the next"
        " get loads again.",
    )
    edge_join_wait_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="Client: how long a read waits for a load another client has in flight"
        " (its loading mark in Redis) before loading the key itself.",
    )
    warm_local: bool = Field(
        True,
        description="The predict agent carries out its own warmup commands in-process (no"
        " Kafka hop) and publishes them marked as claimed; off: the writer agent does all.",
    )

    # --- Worker ------------------------------------------------------------------
    app_id: str = Field(
        "cachecast",
        pattern=r"^[A-Za-z0-9._-]+$",
    )
    topic_state: str = Field(
        "",
        description="Compacted topic of model-state snapshots, one key per access partition.",
    )
    topic_stats: str = Field(
        "",
        description="Per-batch statistics, re-partitioned by namespace for the stats table.",
    )
    topic_stats_view: str = Field(
        "",
        description="Compacted: each namespace's statistics, read by every worker's monitor.",
    )
    topic_sequence: str = Field(
        "",
        description="Access events re-partitioned by user (or session, or client).",
    )
    worker_session_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        validation_alias=_env("CACHECAST_SESSION_TIMEOUT_S", "worker_session_timeout_s"),
        description="Consumer-group session timeout; the broker's group.min.session.timeout.ms"
        " must allow it.",
    )
    worker_heartbeat_s: float = Field(
        1.0,
        gt=0,
        le=60,
        validation_alias=_env("CACHECAST_HEARTBEAT_S", "worker_heartbeat_s"),
    )
    worker_fetch_min_bytes: int = Field(
        64 * 1024,
        ge=1,
        le=64 * 1024 * 1024,
        description="A worker's fetch from Kafka waits for this many bytes of records, or"
        " CACHECAST_WORKER_FETCH_WAIT_MS: fewer, fuller fetches (1: return as soon as any"
        " record is there).",
    )
    worker_fetch_wait_ms: int = Field(
        25,
        ge=0,
        le=1500,
        description="Longest a worker's fetch waits for CACHECAST_WORKER_FETCH_MIN_BYTES; the"
        " most it delays an event that arrives alone.",
    )
    web_host: str = "127.0.0.1"
    web_port: int = Field(
        6066,
        ge=1,
        le=65535,
    )
    checkpoint_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How often model state is snapshotted and input offsets committed.",
    )
    checkpoint_fork: bool = Field(
        True,
        description="Encode snapshots in a forked child process, so the worker pauses for the"
        " fork (milliseconds) instead of the whole encode (seconds once the models are full)."
        " Off, or where the platform cannot fork, snapshots are encoded on the event loop.",
    )
    stats_window_s: float = Field(
        10.0,
        gt=0,
        le=86_400,
        description="Length of a stats window; a MetricsSnapshot is published per window.",
    )
    loaders: str = Field(
        "",
        repr=False,  # may hold an origin's API key in a header
        description="Per-namespace loaders as JSON, or @path/to/file.json (see pipeline/loaders).",
    )
    warming_enabled: bool = Field(
        True,
        validation_alias=_env("CACHECAST_WARMING", "warming_enabled"),
        description="When off, the worker learns and reports but issues no warmup commands.",
    )
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token for the monitor API's actions (POST); without one, POST"
        " is refused.",
    )

    @field_validator("redis_max_memory")
    @classmethod
    def _check_memory(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_memory_size(value)
            return value.strip()
        return None

    @field_validator("kafka_bootstrap_servers", "redis_cluster_nodes")
    @classmethod
    def _check_hostports(cls, value: str) -> str:
        for item in (part.strip() for part in value.split(",") if part.strip()):
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{item!r} is not host:port")
        return value

    @field_validator(
        "topic_access",
        "topic_warmup",
        "topic_outcomes",
        "topic_metrics",
        "topic_dead_letter",
        "topic_state",
        "topic_stats",
        "topic_stats_view",
        "topic_sequence",
    )
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if value == "":
            return value  # filled in from topic_namespace
        if not _TOPIC_RE.match(value) or value in {".", ".."}:
            raise ValueError(f"{value!r} is not a Kafka topic name ([A-Za-z0-9._-], 1-249 chars)")
        return value

    @field_validator("loaders")
    @classmethod
    def _check_loaders(cls, value: str) -> str:
        text = value.strip()
        if text and not text.startswith("@"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError("must be a JSON object mapping namespaces to loader options")
        elif text and not Path(text[1:]).is_file():
            raise ValueError(f"loader file {text[1:]!r} does not exist")
        return value

    @model_validator(mode="after")
    def _name_topics(self) -> Settings:
        for field, role in _TOPIC_ROLES.items():
            if not getattr(self, field):
                setattr(self, field, f"{self.topic_namespace}.{role}")
        return self

    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        if self.smart_ttl_min > self.smart_ttl_max:
            raise ValueError("CACHECAST_TTL_MIN must not exceed CACHECAST_TTL_MAX")
        if self.redis_enable_clustering and not self.cluster_nodes():
            raise ValueError("REDIS_ENABLE_CLUSTERING is on but REDIS_CLUSTER_NODES is empty")
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs"
                " KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        if self.redis_username and not self.redis_password:
            raise ValueError("REDIS_USERNAME needs REDIS_PASSWORD")
        return self

    @property
    def redis_retry_delay_s(self) -> float:
        """``REDIS_RETRY_DELAY`` in seconds (it is set in milliseconds)."""
        return self.redis_retry_delay_ms / 1000

    def redis_secret(self) -> str | None:
        """``REDIS_PASSWORD`` in clear, for the Redis clients only."""
        return self.redis_password.get_secret_value() if self.redis_password else None

    def kafka_brokers(self) -> list[str]:
        """The bootstrap servers as a list."""
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]

    def cluster_nodes(self) -> list[tuple[str, int]]:
        """Redis Cluster startup nodes as (host, port) pairs."""
        nodes = []
        for item in (p.strip() for p in self.redis_cluster_nodes.split(",") if p.strip()):
            host, _, port = item.rpartition(":")
            nodes.append((host, int(port)))
        return nodes

    def loader_config(self) -> dict[str, dict[str, object]]:
        """CACHECAST_LOADERS parsed: inline JSON, or ``@file`` holding JSON."""
        text = self.loaders.strip()
        if not text:
            return {}
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        parsed = json.loads(text)
        if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
            raise ValueError("CACHECAST_LOADERS must map namespaces to objects")
        return parsed

    def redis_max_memory_bytes(self) -> int | None:
        """REDIS_MAX_MEMORY in bytes, or None when unset."""
        return parse_memory_size(self.redis_max_memory) if self.redis_max_memory else None


def _variable_name(field_name: str) -> str:
    field = Settings.model_fields.get(field_name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, AliasChoices) and alias.choices:
        first = alias.choices[0]
        if isinstance(first, str):
            return first
    return field_name.upper()


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment (and overrides), or fail clearly.

    A bad value raises :class:`ConfigError` whose message names the environment
    variable, the bad value and what was expected, one line per problem.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err.get("loc", ())
            name = _variable_name(str(loc[0])) if loc else "settings"
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"{name}: {err.get('msg', 'invalid value')}{shown}")
        raise ConfigError("invalid cachecast configuration:\n  " + "\n  ".join(lines)) from None


#: The cache configuration of the layer cachecast grew out of (snake_case or
#: camelCase) and the setting each name sets.
CACHE_CONFIG_NAMES: Final[dict[str, str]] = {
    "host": "redis_host",
    "port": "redis_port",
    "password": "redis_password",
    "db": "redis_db",
    "key_prefix": "redis_key_prefix",
    "keyPrefix": "redis_key_prefix",
    "default_ttl": "redis_default_ttl",
    "defaultTTL": "redis_default_ttl",
    "defaultTtl": "redis_default_ttl",
    "max_memory": "redis_max_memory",
    "maxMemory": "redis_max_memory",
    "compression_threshold": "redis_compression_threshold",
    "compressionThreshold": "redis_compression_threshold",
    "enable_compression": "redis_enable_compression",
    "enableCompression": "redis_enable_compression",
    "enable_clustering": "redis_enable_clustering",
    "enableClustering": "redis_enable_clustering",
    "nodes": "redis_cluster_nodes",
    "retry_delay": "redis_retry_delay_ms",
    "retryDelay": "redis_retry_delay_ms",
    "retry_delay_on_failover": "redis_retry_delay_ms",
    "retryDelayOnFailover": "redis_retry_delay_ms",
    "max_retries": "redis_max_retries",
    "maxRetries": "redis_max_retries",
    "max_retries_per_request": "redis_max_retries",
    "maxRetriesPerRequest": "redis_max_retries",
}


def _nodes(value: object) -> str:
    """``nodes`` as a list of host/port pairs ({"host", "port"}, (host, port) or "host:port")."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"nodes: expected a list of host/port pairs, got {value!r}")
    out = []
    for node in value:
        if isinstance(node, Mapping) and set(node) == {"host", "port"}:
            host, port = node["host"], node["port"]
        elif isinstance(node, (list, tuple)) and len(node) == 2:
            host, port = node
        elif isinstance(node, str) and ":" in node:
            host, _, port = node.rpartition(":")
        else:
            raise ConfigError(f"nodes: {node!r} is not a host/port pair")
        out.append(f"{host}:{port}")
    return ",".join(out)


def cache_settings(config: Settings | Mapping[str, object] | None = None) -> Settings:
    """The settings of a cache client: given, from the environment, or from a config dict.

    A dict uses the original cache configuration's names (:data:`CACHE_CONFIG_NAMES`,
    snake_case or camelCase; ``retry_delay`` in milliseconds, ``nodes`` a list of
    host/port pairs); what it leaves out comes from the environment. An unknown
    name is an error, not ignored.

    >>> s = cache_settings({"host": "cache.local", "port": 6380, "keyPrefix": "app:",
    ...                     "nodes": [{"host": "a", "port": 7000}, ("b", 7001)]})
    >>> s.redis_host, s.redis_port, s.redis_key_prefix, s.cluster_nodes()
    ('cache.local', 6380, 'app:', [('a', 7000), ('b', 7001)])
    >>> cache_settings({"hots": "x"})
    Traceback (most recent call last):
    ...
    pipeline.config.ConfigError: unknown cache configuration name 'hots' (known: ...
    """
    if config is None:
        return load_settings()
    if isinstance(config, Settings):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"expected Settings or a configuration dict, got {type(config).__name__}")
    overrides: dict[str, object] = {}
    for name, value in config.items():
        field = CACHE_CONFIG_NAMES.get(name)
        if field is None:
            known = ", ".join(sorted(n for n in CACHE_CONFIG_NAMES if n == n.lower()))
            raise ConfigError(
                f"unknown cache configuration name {name!r} (known: {known}, or camelCase)"
            )
        if field in overrides:
            raise ConfigError(f"{name!r} sets {field} a second time")
        overrides[field] = _nodes(value) if name == "nodes" else value
    return load_settings(**overrides)


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user cache directory (``$XDG_CACHE_HOME/cachecast``, default ``~/.cache``).

    Kafka's jars (~46 MB) are downloaded there once per user, not once per checkout
    or run; a worker keeps its (small) Faust data directory there.
    """
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cachecast"
