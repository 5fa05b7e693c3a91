"""Settings use the original cache layer's variable names; bad values fail naming the variable."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_settings, parse_memory_size
from pipeline.decide import engine_config
from pipeline.models import WarmEngine


def test_the_seed_environment_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "REDIS_HOST": "cache.internal",
        "REDIS_PORT": "6380",
        "REDIS_PASSWORD": "s3cret",
        "REDIS_DB": "2",
        "REDIS_KEY_PREFIX": "shop:",
        "REDIS_DEFAULT_TTL": "600",
        "REDIS_MAX_MEMORY": "256mb",
        "REDIS_COMPRESSION_THRESHOLD": "2048",
        "REDIS_ENABLE_COMPRESSION": "false",
        "REDIS_ENABLE_CLUSTERING": "true",
        "REDIS_CLUSTER_NODES": "10.0.0.1:7000,10.0.0.2:7000",
        "REDIS_RETRY_DELAY": "250",
        "REDIS_MAX_RETRIES": "5",
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "CACHECAST_TOPIC_ACCESS": "shop.access",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert (s.redis_host, s.redis_port, s.redis_secret(), s.redis_db) == (
        "cache.internal",
        6380,
        "s3cret",
        2,
    )
    assert "s3cret" not in repr(s)
    assert "s3cret" not in str(s.model_dump())
    assert (s.redis_key_prefix, s.redis_default_ttl, s.redis_max_memory_bytes()) == (
        "shop:",
        600,
        256 * 1024**2,
    )
    assert (s.redis_compression_threshold, s.redis_enable_compression) == (2048, False)
    assert s.cluster_nodes() == [("10.0.0.1", 7000), ("10.0.0.2", 7000)]
    assert (s.redis_retry_delay_ms, s.redis_max_retries) == (250, 5)
    assert s.redis_retry_delay_s == 0.25
    assert s.kafka_brokers() == ["k1:9092", "k2:9092"]
    assert s.topic_access == "shop.access"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("REDIS_PORT", "seventy", "REDIS_PORT: Input should be a valid integer"),
        ("REDIS_PORT", "70000", "REDIS_PORT: Input should be less than or equal to 65535"),
        ("REDIS_DB", "-1", "REDIS_DB"),
        ("REDIS_MAX_MEMORY", "lots", "REDIS_MAX_MEMORY: Value error, 'lots' is not a memory size"),
        ("REDIS_ENABLE_COMPRESSION", "maybe", "REDIS_ENABLE_COMPRESSION"),
        ("REDIS_RETRY_DELAY", "0", "REDIS_RETRY_DELAY"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "KAFKA_BOOTSTRAP_SERVERS: Value error"),
        ("CACHECAST_TOPIC_ACCESS", "bad topic!", "CACHECAST_TOPIC_ACCESS"),
        ("CACHECAST_SAMPLE_RATE", "1.5", "CACHECAST_SAMPLE_RATE"),
        ("CACHECAST_RULE_WASTE_BUDGET", "-0.1", "CACHECAST_RULE_WASTE_BUDGET"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert words in str(info.value)
    assert repr(value) in str(info.value)


def test_clustering_without_nodes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_ENABLE_CLUSTERING", "1")
    with pytest.raises(ConfigError, match="REDIS_CLUSTER_NODES is empty"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "size"),
    [("100", 100), ("1k", 1000), ("1kb", 1024), ("2MB", 2 * 1024**2), ("1g", 10**9)],
)
def test_memory_sizes_follow_redis_conf_units(text: str, size: int) -> None:
    assert parse_memory_size(text) == size


def test_the_waste_budgets_reach_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHECAST_WASTE_BUDGET", "0.01")
    monkeypatch.setenv("CACHECAST_RULE_WASTE_BUDGET", "0.05")
    engine = WarmEngine(engine_config(load_settings()))
    assert engine.scorer.waste_budget == 0.01
    assert engine.rules.waste_budget == 0.05


def test_the_user_bound_is_its_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default a tenth of the tracked keys; CACHECAST_MAX_USERS sets it apart, and the
    engine then forgets users past it, whatever its key bound."""
    monkeypatch.setenv("CACHECAST_MAX_TRACKED_KEYS", "1000")
    assert WarmEngine(engine_config(load_settings())).affinity.max_users == 100
    monkeypatch.setenv("CACHECAST_MAX_USERS", "40")
    engine = WarmEngine(engine_config(load_settings()))
    for n in range(500):
        engine.observe(f"item-{n % 30}", float(n), hit=False, user=f"user-{n}")
    assert 0 < len(engine.affinity._users) <= 40
    monkeypatch.setenv("CACHECAST_MAX_USERS", "-1")
    with pytest.raises(ConfigError, match="CACHECAST_MAX_USERS"):
        load_settings()
