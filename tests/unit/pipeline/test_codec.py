"""The Redis value envelope: round trips, compression, and clear errors on foreign bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.codec import HEADER_SIZE, CodecError, ValueCodec

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, threshold=st.integers(0, 64), origin=st.sampled_from(["app", "warm"]))
def test_any_json_value_round_trips(value: object, threshold: int, origin: str) -> None:
    codec = ValueCodec(threshold=threshold)
    encoded = codec.encode(value, origin=origin, now=1_700_000_000.25)  # type: ignore[arg-type]
    envelope = codec.decode(encoded.data)
    assert envelope.value == value
    assert envelope.origin == origin
    assert envelope.written_at == 1_700_000_000.25
    assert envelope.compressed == encoded.compressed
    assert envelope.raw_size == encoded.raw_size


def test_values_above_the_threshold_are_compressed_and_smaller() -> None:
    codec = ValueCodec(threshold=1024)
    small = codec.encode({"name": "x" * 100})
    big = codec.encode({"rows": [{"id": i, "name": "customer"} for i in range(500)]})
    assert not small.compressed
    assert big.compressed
    assert len(big.data) < big.raw_size / 4
    assert codec.decode(big.data).value["rows"][499] == {"id": 499, "name": "customer"}


def test_incompressible_values_are_stored_raw() -> None:
    import os

    noise = os.urandom(3000).hex()
    encoded = ValueCodec(threshold=16).encode(noise)
    assert not encoded.compressed


def test_compression_can_be_disabled_or_forced() -> None:
    data = {"text": "abc" * 1000}
    assert not ValueCodec(threshold=10, enable_compression=False).encode(data).compressed
    assert ValueCodec(threshold=10**9).encode(data, compress=True).compressed


def test_read_header_tells_origin_without_decoding() -> None:
    codec = ValueCodec()
    header = codec.read_header(codec.encode([1, 2], origin="warm", now=10.0).data)
    assert (header.origin, header.written_at, header.compressed) == ("warm", 10.0, False)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "shorter than the 16-byte header"),
        (b'{"plain": "json written by another app"}', "not a cachecast value"),
        (b"\xcc\xce\x09" + bytes(13) + b"1", "unsupported envelope format version 9"),
        (b"\xcc\xce\x01\x80" + bytes(12) + b"1", "unknown header flags"),
    ],
)
def test_foreign_values_raise_a_clear_error(data: bytes, words: str) -> None:
    with pytest.raises(CodecError, match=words):
        ValueCodec().decode(data)


def test_any_damaged_byte_is_detected() -> None:
    codec = ValueCodec(threshold=64)
    encoded = codec.encode({"k": "v" * 500}).data
    for position in range(HEADER_SIZE, len(encoded)):
        damaged = bytearray(encoded)
        damaged[position] ^= 0x40
        with pytest.raises(CodecError, match="corrupt value"):
            codec.decode(bytes(damaged))


def test_a_huge_declared_size_is_refused_without_allocating() -> None:
    import zlib

    payload = struct.pack("<I", 2**31) + b"\x00" * 8
    header = struct.pack(">2sBBQI", b"\xcc\xce", 1, 1, 0, zlib.crc32(payload))
    with pytest.raises(CodecError, match="declares 2147483648 uncompressed bytes"):
        ValueCodec().decode(header + payload)


def test_values_json_cannot_hold_are_refused() -> None:
    with pytest.raises(CodecError, match="cannot be stored as JSON"):
        ValueCodec().encode({"when": object()})
