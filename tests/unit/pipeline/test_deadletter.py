"""Dead letters keep the original bytes and carry the reason in headers."""

from __future__ import annotations

from pipeline.deadletter import dead_letter_headers, reason_of


def test_headers_carry_reason_source_field_and_index() -> None:
    headers = dict(
        dead_letter_headers(
            "key: is 2000 characters long; the limit is 1024",
            source="cachecast.access/3/1207",
            agent="observe",
            field="key",
            index=12,
        )
    )
    assert headers["cachecast.reason"] == b"key: is 2000 characters long; the limit is 1024"
    assert headers["cachecast.source"] == b"cachecast.access/3/1207"
    assert headers["cachecast.agent"] == b"observe"
    assert headers["cachecast.field"] == b"key"
    assert headers["cachecast.index"] == b"12"


def test_a_whole_record_reject_has_no_field_or_index() -> None:
    headers = dead_letter_headers("not valid JSON", source="t/0/1", agent="observe")
    names = [name for name, _ in headers]
    assert "cachecast.field" not in names
    assert "cachecast.index" not in names
    assert reason_of(headers) == "not valid JSON"
    assert reason_of([]) is None
