"""delete_by_pattern stays inside its namespace, whatever the pattern or the prefix holds."""

from __future__ import annotations

import uuid

import pytest

from pipeline.client import RedisCacheManager, smart_ttl_hash, tag_key
from tests.integration.client.conftest import Backend, MakeCache

ESCAPE_ATTEMPTS = [
    "*",
    "**",
    "*:*",
    "?*",
    "[",
    "[*",
    "*[",
    "]*",
    "[^a]*",
    "[a-z]*",
    "\\",
    "*\\",
    "\\*",
    "\\\\*",
    "../*",
    "*#*",
    ":*",
    "\x00*",
]


def _neighbours(prefix: str, other: str) -> list[str]:
    """Keys a pattern in namespace ``users`` of ``prefix`` must never reach."""
    bare = prefix.rstrip(":")
    return [
        f"{prefix}users2:1",
        f"{prefix}user:1",
        f"{prefix}users.v2:1",
        f"{prefix}users-x:1",
        f"{prefix}Users:1",
        f"{prefix}#ttl:users:1",
        f"{prefix}#tag:users:zz",
        f"{prefix}#keytags:users:1",
        f"{prefix}#warm:users:1",
        f"{bare}users:1",
        f"{bare}Xusers:1",
        f"{other}users:1",
        f"{other}{prefix}users:1",
        f"x{prefix}users:1",
    ]


@pytest.mark.parametrize(
    "prefix_shape",
    ["plain", "globby"],
    ids=["prefix-plain", "prefix-with-glob-chars"],
)
async def test_patterns_cannot_escape_the_namespace(
    backend: Backend, make_cache: MakeCache, prefix_shape: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    prefix = f"t{tag}:" if prefix_shape == "plain" else f"t{tag}[1]*?\\:"
    other = f"o{tag}:"
    cache: RedisCacheManager = make_cache(backend, redis_key_prefix=prefix)
    backend.prefixes.extend([other, f"t{tag}", f"x{prefix}", f"t{tag}1"])
    neighbours = _neighbours(prefix, other)
    if prefix_shape == "globby":
        # what the unescaped prefix glob t<tag>[1]*?\: would also match
        neighbours += [f"t{tag}1ZZ?\\:users:1", f"t{tag}1:users:1"]
    raw = backend.raw()
    try:
        for key in neighbours:
            raw.set(key, b"keep", ex=300)
        for attempt in ESCAPE_ATTEMPTS:
            await cache.delete_by_pattern("users", attempt)
            survivors = [key for key in neighbours if raw.exists(key)]
            assert survivors == neighbours, f"pattern {attempt!r} reached outside the namespace"
        # and inside the namespace the same patterns do their job
        inside = ["a", "b:c", "a*b", "a[b]", "a\\b", "a?b", "#x"]
        for key in inside:
            await cache.set("users", key, key, tags=["t"])
        assert await cache.delete_by_pattern("users", "a\\*b") == 1  # literal a*b only
        assert await cache.delete_by_pattern("users", "a[[]b]") == 1  # literal a[b]
        assert await cache.delete_by_pattern("users", "*") == 5
        assert await cache.mget("users", inside) == [None] * len(inside)
        assert raw.scard(tag_key(prefix, "users", "t")) == 0
        assert [key for key in neighbours if raw.exists(key)] == neighbours
    finally:
        raw.close()


async def test_pattern_deletes_many_keys_across_scan_pages(
    backend: Backend, make_cache: MakeCache
) -> None:
    cache: RedisCacheManager = make_cache(backend)
    items = {f"session:{i}": i for i in range(1200)}
    items.update({f"profile:{i}": i for i in range(50)})
    await cache.mset("users", items, tags=["all"])
    raw = backend.raw()
    try:
        raw.hset(smart_ttl_hash(cache.settings.redis_key_prefix, "users"), "session:1", 60)
        assert await cache.delete_by_pattern("users", "session:*") == 1200
        assert await cache.get("users", "session:7") is None
        assert await cache.get("users", "profile:7") == 7
        # the pipeline's smart TTLs are not data: a data pattern leaves them alone
        assert raw.hexists(smart_ttl_hash(cache.settings.redis_key_prefix, "users"), "session:1")
        assert raw.scard(tag_key(cache.settings.redis_key_prefix, "users", "all")) == 50
    finally:
        raw.close()
    assert await cache.delete_by_tags("users", ["all"]) == 50
