"""Key layout, argument validation, and namespace confinement of SCAN patterns."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.client.keys import (
    InvalidKeyError,
    data_key,
    escape_glob,
    keytags_key,
    pattern_for,
    smart_ttl_hash,
    split_data_key,
    tag_key,
    validate_key,
    validate_namespace,
    validate_tags,
    validate_ttl,
    warm_marker_key,
)


def redis_glob(pattern: str, text: str) -> bool:
    """Redis's stringmatchlen (util.c), case-sensitive, ported as-is."""

    def match(p: int, s: int) -> bool:
        while p < len(pattern) and s <= len(text):
            c = pattern[p]
            if c == "*":
                while p + 1 < len(pattern) and pattern[p + 1] == "*":
                    p += 1
                if p + 1 == len(pattern):
                    return True
                return any(match(p + 1, start) for start in range(s, len(text) + 1))
            if s == len(text):
                return False
            if c == "?":
                s += 1
            elif c == "[":
                p += 1
                negate = p < len(pattern) and pattern[p] == "^"
                if negate:
                    p += 1
                matched = False
                while True:
                    if p >= len(pattern):
                        p -= 1
                        break
                    if pattern[p] == "\\" and p + 1 < len(pattern):
                        p += 1
                        if pattern[p] == text[s]:
                            matched = True
                    elif pattern[p] == "]":
                        break
                    elif p + 2 < len(pattern) and pattern[p + 1] == "-":
                        low, high = sorted((pattern[p], pattern[p + 2]))
                        p += 2
                        if low <= text[s] <= high:
                            matched = True
                    elif pattern[p] == text[s]:
                        matched = True
                    p += 1
                if negate:
                    matched = not matched
                if not matched:
                    return False
                s += 1
            else:
                if c == "\\" and p + 1 < len(pattern):
                    p += 1
                    c = pattern[p]
                if c != text[s]:
                    return False
                s += 1
            p += 1
        while p < len(pattern) and pattern[p] == "*":
            p += 1
        return p == len(pattern) and s == len(text)

    return match(0, 0)


def test_reference_glob_behaves_like_redis() -> None:
    assert redis_glob("a*b", "axxb")
    assert redis_glob("a?c", "abc")
    assert redis_glob("a[bc]d", "acd")
    assert not redis_glob("a[^bc]d", "acd")
    assert redis_glob("a\\*b", "a*b")
    assert not redis_glob("a\\*b", "axb")
    assert redis_glob("[a-c]x", "bx")


def test_key_layout() -> None:
    assert data_key("cache:", "users", "42") == "cache:users:42"
    assert smart_ttl_hash("cache:", "users") == "cache:#ttl:users"
    assert tag_key("cache:", "users", "t") == "cache:#tag:users:t"
    assert keytags_key("cache:", "users", "42") == "cache:#keytags:users:42"
    assert warm_marker_key("cache:", "users", "42") == "cache:#warm:users:42"
    assert split_data_key("cache:", "users", "cache:users:") is None


@pytest.mark.parametrize(
    ("namespace", "message"),
    [
        ("", "must not be empty"),
        ("a" * 65, "the limit is 64"),
        ("a:b", "may only contain"),
        ("a*", "may only contain"),
        ("#tag", "may only contain"),
        ("a b", "may only contain"),
        ("ü", "may only contain"),
    ],
)
def test_bad_namespaces_are_rejected(namespace: str, message: str) -> None:
    with pytest.raises(InvalidKeyError, match=message):
        validate_namespace(namespace)


def test_key_tag_and_ttl_limits() -> None:
    assert validate_key("k" * 1024) == "k" * 1024
    with pytest.raises(InvalidKeyError, match="the limit is 1024"):
        validate_key("k" * 1025)
    with pytest.raises(InvalidKeyError, match="must be a str"):
        validate_key(42)  # type: ignore[arg-type]
    assert validate_tags(None) == ()
    with pytest.raises(InvalidKeyError, match="not a single str"):
        validate_tags("tag")
    with pytest.raises(InvalidKeyError, match="limit is 32"):
        validate_tags([str(i) for i in range(33)])
    with pytest.raises(InvalidKeyError, match="non-empty"):
        validate_tags([""])
    with pytest.raises(InvalidKeyError, match="whole seconds"):
        validate_ttl(1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError, match="whole seconds"):
        validate_ttl(True)
    assert validate_ttl(315_360_000) == 315_360_000


def test_escape_glob_matches_literally() -> None:
    for text in ["a*b", "[x]", "q?", "back\\slash", "mix*?[]\\"]:
        assert redis_glob(escape_glob(text), text)
        assert not redis_glob(escape_glob(text), text + "x")


_namespaces = st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True)
_glob_text = st.text(alphabet="ab:#*?[]^-\\", max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.text(alphabet="cx:*?[]\\#", min_size=0, max_size=6),
    namespace=_namespaces,
    other_namespace=_namespaces,
    other_prefix=st.text(alphabet="cx:*?[]\\#", max_size=6),
    pattern=_glob_text.filter(bool),
    key=st.text(alphabet="ab:#*?[]\\", min_size=1, max_size=6),
)
def test_a_pattern_never_matches_outside_its_namespace(
    prefix: str,
    namespace: str,
    other_namespace: str,
    other_prefix: str,
    pattern: str,
    key: str,
) -> None:
    match = pattern_for(prefix, namespace, pattern)
    for candidate in (
        data_key(other_prefix, other_namespace, key),
        data_key(prefix, other_namespace, key),
        smart_ttl_hash(prefix, namespace),
        tag_key(prefix, namespace, key),
        keytags_key(prefix, namespace, key),
        warm_marker_key(prefix, namespace, key),
    ):
        if redis_glob(match, candidate):
            assert split_data_key(prefix, namespace, candidate) is not None, (match, candidate)
    # and inside the namespace the user's glob decides
    assert redis_glob(match, data_key(prefix, namespace, key)) == redis_glob(pattern, key)
