"""The monitor API's rules: views, actions, and who may act."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.monitor import (
    MAX_BODY_BYTES,
    MAX_ITEMS,
    ApiError,
    check_token,
    parse_action,
    parse_view,
)


def _body(action: str, **params: object) -> bytes:
    return orjson.dumps({"action": action, "params": params})


def test_views() -> None:
    assert parse_view(None) == "all"
    assert parse_view("health") == "health"
    with pytest.raises(ApiError, match="unknown type 'everything'") as caught:
        parse_view("everything")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("header", "token", "status"),
    [
        (None, "t0k", 401),
        ("t0k", "t0k", 401),  # not a bearer header
        ("Bearer nope", "t0k", 403),
        ("Bearer t0k", None, 403),  # no token configured: fail closed
        ("Bearer t0k", "", 403),
    ],
)
def test_only_the_configured_bearer_token_may_act(
    header: str | None, token: str | None, status: int
) -> None:
    refused = check_token(header, token)
    assert refused is not None
    assert refused.status == status
    assert "t0k" not in refused.message


def test_actions_are_validated() -> None:
    assert parse_action(_body("warmup", namespace="n", keys=["a", "b", "a"])).params == {
        "keys": ["a", "b"]
    }
    assert parse_action(_body("configure", maxmemory="64mb")).params == {"maxmemory": "64mb"}
    bad = [
        (b"not json", 400, "not valid JSON"),
        (b"[1]", 400, "JSON object"),
        (_body("drop_database"), 400, "unknown action"),
        (_body("clear", namespace="a:b"), 400, "params.namespace"),
        (_body("clear"), 400, "params.namespace"),
        (_body("warmup", namespace="n", keys=[]), 400, "params.keys"),
        (_body("warmup", namespace="n", keys=["k"] * (MAX_ITEMS + 1)), 400, "params.keys"),
        (_body("warmup", namespace="n", keys=[""]), 400, "params.keys"),
        (_body("invalidate_tags", namespace="n", tags="t"), 400, "params.tags"),
        (_body("delete_pattern", namespace="n"), 400, "params.pattern"),
        (_body("configure", save="900 1"), 400, "configure takes"),
        (b" " * (MAX_BODY_BYTES + 1), 413, "limit"),
    ]
    for body, status, words in bad:
        with pytest.raises(ApiError, match=words) as caught:
            parse_action(body)
        assert caught.value.status == status


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)


@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda action, params: orjson.dumps({"action": action, "params": params}),
            st.sampled_from(["clear", "warmup", "invalidate_tags", "delete_pattern", "configure"]),
            st.dictionaries(
                st.sampled_from(["namespace", "keys", "tags", "pattern", "maxmemory", "x"]), _json
            ),
        ),
    )
)
@settings(max_examples=400, deadline=None)
def test_any_body_is_an_action_or_a_clear_refusal(body: bytes) -> None:
    refusal: ApiError | None = None
    try:
        action = parse_action(body)
    except ApiError as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.status in (400, 413)
        assert refusal.message
    else:
        assert action.name in ("clear", "warmup", "invalidate_tags", "delete_pattern", "configure")
