"""Redis key layout of cachecast: the one place that spells a key.

Data keys are ``prefix + namespace + ":" + key``, as the original cache layer
wrote them. Everything cachecast keeps beside the data lives under
``prefix + "#"``: a namespace is ``[A-Za-z0-9_.-]+`` and so can never start with
``#``, which means no data key can collide with an internal one, and no
namespace-confined pattern can reach one.

==============================  ===================================================
key                             holds
==============================  ===================================================
``{p}{ns}:{key}``               the value envelope (or a plain integer counter)
``{p}#ttl:{ns}``                hash of smart TTLs published by the pipeline: key -> seconds
``{p}#tag:{ns}:{tag}``          set of the data keys tagged ``tag``
``{p}#keytags:{ns}:{key}``      set of the tags of one data key (to clean the above)
``{p}#warm:{ns}:{key}``         "written by the warmer, not read yet" marker
``{p}#rules:{ns}:{shard}``      hash of prefetch rules: trigger key -> what to load with it
``{p}#rulelog:{ns}``            stream of prefetch-rule changes, which clients follow
==============================  ===================================================

>>> data_key("cache:", "users", "42")
'cache:users:42'
>>> smart_ttl_hash("cache:", "users")
'cache:#ttl:users'
>>> rules_hash("cache:", "users", "42")
'cache:#rules:users:8'
>>> tag_key("cache:", "users", "team:7")
'cache:#tag:users:team:7'
>>> pattern_for("cache:", "users", "session:*")
'cache:users:session:*'
>>> pattern_for("c[1]*:", "users", "*")
'c\\\\[1\\\\]\\\\*:users:*'
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from typing import Final

from schemas.contracts import (
    MAX_KEY_LENGTH,
    MAX_NAMESPACE_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_TTL_S,
    NAMESPACE_PATTERN,
)

__all__ = [
    "INTERNAL_MARK",
    "KEY_RULES",
    "RULE_SHARDS",
    "USER_RULES",
    "InvalidKeyError",
    "data_key",
    "escape_glob",
    "keytags_key",
    "namespace_base",
    "pattern_for",
    "rules_hash",
    "rules_stream",
    "smart_ttl_hash",
    "split_data_key",
    "tag_key",
    "validate_key",
    "validate_namespace",
    "validate_tags",
    "validate_ttl",
    "warm_marker_key",
]

#: Internal keys start with ``prefix + INTERNAL_MARK``; no namespace can contain it.
INTERNAL_MARK: Final = "#"
_NAMESPACE_RE: Final = re.compile(NAMESPACE_PATTERN)
_GLOB_SPECIAL: Final = re.compile(r"([*?\[\]\\])")


class InvalidKeyError(ValueError):
    """A namespace, key, tag, pattern or TTL breaks the limits of the event contract."""


def validate_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a valid cachecast namespace, else raise.

    >>> validate_namespace("users.v2")
    'users.v2'
    >>> validate_namespace("a:b")
    Traceback (most recent call last):
    ...
    pipeline.client.keys.InvalidKeyError: namespace 'a:b' may only contain letters, digits, ...
    """
    if not isinstance(namespace, str):
        raise InvalidKeyError(f"namespace must be a str, not {type(namespace).__name__}")
    if not namespace:
        raise InvalidKeyError("namespace must not be empty")
    if len(namespace) > MAX_NAMESPACE_LENGTH:
        raise InvalidKeyError(
            f"namespace is {len(namespace)} characters; the limit is {MAX_NAMESPACE_LENGTH}"
        )
    if _NAMESPACE_RE.fullmatch(namespace) is None:
        raise InvalidKeyError(
            f"namespace {namespace!r} may only contain letters, digits, '_', '.' and '-'"
        )
    return namespace


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid cache key (1 to 1024 characters), else raise.

    >>> validate_key("")
    Traceback (most recent call last):
    ...
    pipeline.client.keys.InvalidKeyError: key must not be empty
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError("key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"key is {len(key)} characters; the limit is {MAX_KEY_LENGTH}")
    return key


def validate_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    """Return the distinct tags in first-seen order, or raise if any breaks the limits.

    >>> validate_tags(["a", "b", "a"])
    ('a', 'b')
    """
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise InvalidKeyError("tags must be a sequence of str, not a single str")
    unique = tuple(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise InvalidKeyError(f"{len(unique)} tags given; the limit is {MAX_TAGS}")
    for tag in unique:
        if not isinstance(tag, str) or not tag:
            raise InvalidKeyError(f"every tag must be a non-empty str, got {tag!r}")
        if len(tag) > MAX_TAG_LENGTH:
            raise InvalidKeyError(
                f"tag {tag[:20]!r}... is {len(tag)} characters; the limit is {MAX_TAG_LENGTH}"
            )
    return unique


def validate_ttl(ttl: int) -> int:
    """Return ``ttl`` (whole seconds, 1 to ten years) or raise.

    >>> validate_ttl(0)
    Traceback (most recent call last):
    ...
    pipeline.client.keys.InvalidKeyError: ttl must be between 1 and 315360000 seconds, got 0
    """
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise InvalidKeyError(f"ttl must be whole seconds (int), not {type(ttl).__name__}")
    if not 1 <= ttl <= MAX_TTL_S:
        raise InvalidKeyError(f"ttl must be between 1 and {MAX_TTL_S} seconds, got {ttl}")
    return ttl


def namespace_base(prefix: str, namespace: str) -> str:
    """The start every data key of ``namespace`` shares: ``prefix + namespace + ":"``."""
    return prefix + namespace + ":"


def data_key(prefix: str, namespace: str, key: str) -> str:
    """The Redis key holding the value of ``key`` in ``namespace``."""
    return prefix + namespace + ":" + key


def smart_ttl_hash(prefix: str, namespace: str) -> str:
    """The hash where the pipeline publishes smart TTLs: field = key, value = seconds.

    One hash per namespace, bounded by the pipeline, rather than one key per data
    key: per-key records would compete with cached values for memory and LRU slots.
    """
    return prefix + "#ttl:" + namespace


#: Prefetch rules of a namespace are spread over this many hashes (cluster slots).
RULE_SHARDS: Final = 16


#: The kinds of rule a namespace has: prefetch rules (trigger = a key) and user rules
#: (trigger = a user, read as the user's session opens).
KEY_RULES: Final = "rules"
USER_RULES: Final = "userrules"


def rules_hash(prefix: str, namespace: str, trigger: str, kind: str = KEY_RULES) -> str:
    """The hash holding the rule of ``trigger`` (field = the trigger: a key, or a user).

    Sharded by a stable hash of the trigger, so that on a Redis Cluster the rules
    of a busy namespace spread over several nodes instead of loading one.

    >>> rules_hash("c:", "shop", "a"), rules_hash("c:", "shop", "ada", USER_RULES)
    ('c:#rules:shop:3', 'c:#userrules:shop:8')
    """
    shard = zlib.crc32(trigger.encode("utf-8", "surrogatepass")) % RULE_SHARDS
    return prefix + "#" + kind + ":" + namespace + ":" + str(shard)


def rules_stream(prefix: str, namespace: str) -> str:
    """The stream of ``namespace``'s prefetch-rule changes (clients keep rules in memory)."""
    return prefix + "#rulelog:" + namespace


def tag_key(prefix: str, namespace: str, tag: str) -> str:
    """The set of data keys of ``namespace`` that carry ``tag``."""
    return prefix + "#tag:" + namespace + ":" + tag


def keytags_key(prefix: str, namespace: str, key: str) -> str:
    """The set of tags of one data key, so deleting the key can clean the tag sets."""
    return prefix + "#keytags:" + namespace + ":" + key


def warm_marker_key(prefix: str, namespace: str, key: str) -> str:
    """The marker the warmer sets beside a warmed value; its first reader deletes it."""
    return prefix + "#warm:" + namespace + ":" + key


def split_data_key(prefix: str, namespace: str, full_key: str) -> str | None:
    """The cache key inside ``full_key``, or None if it is not a data key of ``namespace``.

    >>> split_data_key("cache:", "users", "cache:users:42")
    '42'
    >>> split_data_key("cache:", "users", "cache:users2:42") is None
    True
    """
    base = prefix + namespace + ":"
    if full_key.startswith(base) and len(full_key) > len(base):
        return full_key[len(base) :]
    return None


def escape_glob(text: str) -> str:
    """Escape Redis glob metacharacters (``* ? [ ] \\``) so ``text`` matches literally."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def pattern_for(prefix: str, namespace: str, pattern: str) -> str:
    """A SCAN ``MATCH`` pattern confined to the data keys of ``namespace``.

    The prefix and namespace are matched literally (escaped); only ``pattern``,
    which applies to the key part, is a glob. A Redis glob is anchored at both
    ends, so whatever ``pattern`` holds, a match starts with the literal
    ``prefix + namespace + ":"``: it cannot reach another namespace, another
    prefix, or cachecast's internal ``prefix + "#"`` keys.
    """
    if not isinstance(pattern, str) or not pattern:
        raise InvalidKeyError("pattern must be a non-empty str")
    if len(pattern) > MAX_KEY_LENGTH:
        raise InvalidKeyError(
            f"pattern is {len(pattern)} characters; the limit is {MAX_KEY_LENGTH}"
        )
    return escape_glob(prefix) + validate_namespace(namespace) + ":" + pattern


def chunked(items: Sequence[str], size: int) -> list[Sequence[str]]:
    """Split ``items`` into consecutive slices of at most ``size``.

    >>> chunked(["a", "b", "c"], 2)
    [['a', 'b'], ['c']]
    """
    return [items[i : i + size] for i in range(0, len(items), size)]
