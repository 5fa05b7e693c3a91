"""The value envelope: how cachecast stores a value in Redis.

Every value is ``header + payload``. The payload is the orjson encoding of the
value, lz4-compressed (block format, size stored) when it is at least
``threshold`` bytes and compression actually saves space. The fixed 16-byte
header lets a reader tell, without decoding the payload, who wrote the value
(the application or the warmer) and when; the warmer's writes are how the
client knows a read was served by a warm.

Header layout (big-endian)::

    offset size field
    0      2    magic  b"\\xcc\\xce"
    2      1    format version (1)
    3      1    flags: bit 0 = lz4, bit 1 = origin warm, bit 2 = loading mark
                (a load is in flight), bit 3 = warmed at the edge (by a client)
    4      8    written-at, milliseconds since the Unix epoch
    12     4    CRC-32 of the stored payload bytes

A *loading mark* (:func:`loading mark`) is an envelope with no value: a client
that starts an edge load writes one (``SET NX PX``) so that every other client
reading the key meanwhile waits for that load instead of fetching again.

A value that is not an envelope (written by someone else) or whose bytes were
damaged raises :class:`CodecError` with the reason, never garbage.

>>> codec = ValueCodec(threshold=64)
>>> encoded = codec.encode({"user": 42, "name": "x" * 100}, origin="warm", now=1700000000.0)
>>> encoded.compressed, encoded.raw_size
(True, 121)
>>> env = codec.decode(encoded.data)
>>> env.value["user"], env.origin, env.written_at
(42, 'warm', 1700000000.0)
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any, Final, Literal

import lz4.block
import orjson

__all__ = [
    "HEADER_SIZE",
    "HIT_HEADER",
    "MAX_VALUE_BYTES",
    "PLAIN_HEAD",
    "CodecError",
    "Encoded",
    "Envelope",
    "Header",
    "Origin",
    "ValueCodec",
    "decode_fast",
    "envelope_flags",
    "is_loading_mark",
    "loading_mark",
    "written_ms",
]

Origin = Literal["app", "warm", "edge"]
"""Who wrote a value: the application, the worker's warmer, or a client's edge warm."""

MAGIC: Final = b"\xcc\xce"
FORMAT_VERSION: Final = 1
_HEADER = struct.Struct(">2sBBQI")
HEADER_SIZE: Final = _HEADER.size
FLAG_LZ4: Final = 0x01
FLAG_WARM: Final = 0x02
FLAG_LOADING: Final = 0x04
FLAG_EDGE: Final = 0x08
_KNOWN_FLAGS: Final = FLAG_LZ4 | FLAG_WARM | FLAG_LOADING | FLAG_EDGE
#: Redis caps a string at 512 MB; refuse to inflate anything larger.
MAX_VALUE_BYTES: Final = 512 * 1024 * 1024
#: Compression must save at least this fraction to be kept.
_MIN_SAVING: Final = 0.05
_ORJSON_OPTS: Final = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class CodecError(ValueError):
    """A value could not be encoded, or stored bytes are not a valid envelope."""


@dataclass(frozen=True, slots=True)
class Header:
    """What the 16-byte header says, readable without touching the payload."""

    version: int
    compressed: bool
    origin: Origin
    written_at: float
    checksum: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded value and its metadata."""

    value: Any
    origin: Origin
    written_at: float
    compressed: bool
    stored_size: int
    raw_size: int


@dataclass(frozen=True, slots=True)
class Encoded:
    """Bytes ready for Redis, with the sizes the client's stats need."""

    data: bytes
    raw_size: int
    compressed: bool


class ValueCodec:
    """Encodes values into envelopes and back.

    Parameters
    ----------
    threshold
        Payloads of at least this many bytes are lz4-compressed.
    enable_compression
        When false, nothing is compressed (compressed values still decode).
    """

    __slots__ = ("enable_compression", "threshold")

    def __init__(self, threshold: int = 1024, enable_compression: bool = True) -> None:
        if threshold < 0:
            raise ValueError("threshold must be >= 0")
        self.threshold = threshold
        self.enable_compression = enable_compression

    def encode(
        self,
        value: Any,
        origin: Origin = "app",
        now: float | None = None,
        compress: bool | None = None,
    ) -> Encoded:
        """Serialise ``value``; ``compress`` overrides the threshold rule when given."""
        try:
            raw = orjson.dumps(value, option=_ORJSON_OPTS)
        except TypeError as exc:
            raise CodecError(f"value cannot be stored as JSON: {exc}") from None
        if len(raw) > MAX_VALUE_BYTES:
            raise CodecError(f"value is {len(raw)} bytes; Redis stores at most {MAX_VALUE_BYTES}")
        want = (
            compress
            if compress is not None
            else self.enable_compression and len(raw) >= self.threshold
        )
        payload, flags = raw, 0
        if want and raw:
            packed = lz4.block.compress(raw, store_size=True)
            if len(packed) <= len(raw) * (1.0 - _MIN_SAVING):
                payload, flags = packed, FLAG_LZ4
        if origin == "warm":
            flags |= FLAG_WARM
        elif origin == "edge":
            flags |= FLAG_WARM | FLAG_EDGE
        elif origin != "app":
            raise CodecError(f"origin must be 'app', 'warm' or 'edge', not {origin!r}")
        written_ms = int((time.time() if now is None else now) * 1000)
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, written_ms, zlib.crc32(payload))
        return Encoded(header + payload, len(raw), bool(flags & FLAG_LZ4))

    def read_header(self, data: bytes) -> Header:
        """Parse and check the header only (cheap: used to spot warmed values)."""
        if len(data) < HEADER_SIZE:
            raise CodecError(
                f"not a cachecast value: {len(data)} bytes is shorter than the "
                f"{HEADER_SIZE}-byte header"
            )
        magic, version, flags, written_ms, checksum = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CodecError(
                f"not a cachecast value: starts with {bytes(data[:2])!r}, expected {MAGIC!r} "
                "(was it written by another application?)"
            )
        if version != FORMAT_VERSION:
            raise CodecError(
                f"unsupported envelope format version {version}; this cachecast reads "
                f"version {FORMAT_VERSION}"
            )
        if flags & ~_KNOWN_FLAGS:
            raise CodecError(f"corrupt value: unknown header flags {flags:#04x}")
        if flags & FLAG_LOADING:
            raise CodecError("no value yet: a load of this key is in flight (loading mark)")
        return Header(
            version=version,
            compressed=bool(flags & FLAG_LZ4),
            origin="edge" if flags & FLAG_EDGE else "warm" if flags & FLAG_WARM else "app",
            written_at=written_ms / 1000.0,
            checksum=checksum,
        )

    def decode(self, data: bytes) -> Envelope:
        """Check and decode an envelope; raises :class:`CodecError` on any damage."""
        header = self.read_header(data)
        payload = memoryview(data)[HEADER_SIZE:]
        if zlib.crc32(payload) != header.checksum:
            raise CodecError("corrupt value: payload checksum mismatch")
        raw = _inflate(payload) if header.compressed else bytes(payload)
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CodecError(f"corrupt value: payload is not valid JSON ({exc})") from None
        return Envelope(
            value=value,
            origin=header.origin,
            written_at=header.written_at,
            compressed=header.compressed,
            stored_size=len(data),
            raw_size=len(raw),
        )


def loading_mark(token: bytes, now: float | None = None) -> bytes:
    """A loading mark envelope: "a load of this key is in flight", with no value.

    ``token`` makes it unique to its writer, who replaces it only if it is still
    its own (compare-and-set), never a value someone else wrote meanwhile.

    >>> data = loading_mark(b"client-1:7", now=1700000000.0)
    >>> is_loading_mark(data), is_loading_mark(ValueCodec().encode(1).data)
    (True, False)
    """
    written_ms = int((time.time() if now is None else now) * 1000)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, FLAG_LOADING, written_ms, zlib.crc32(token))
    return header + token


def is_loading_mark(data: bytes) -> bool:
    """Whether stored bytes are a loading mark (a load in flight), not a value."""
    return (
        len(data) >= HEADER_SIZE
        and data[:2] == MAGIC
        and data[2] == FORMAT_VERSION
        and bool(data[3] & FLAG_LOADING)
    )


#: The header read on a cache hit's fast path: magic+version+flags as one int, and the CRC.
HIT_HEADER: Final = struct.Struct(">I8xI")
#: ``HIT_HEADER``'s first field for an uncompressed, application-written, current-format value.
PLAIN_HEAD: Final = (MAGIC[0] << 24) | (MAGIC[1] << 16) | (FORMAT_VERSION << 8)
#: Header flags the fast decode path handles (uncompressed values, any writer).
_FAST_FLAGS: Final = FLAG_WARM | FLAG_EDGE


def decode_fast(data: bytes, slow: Any) -> Any:
    """The value of an intact, uncompressed envelope (any writer), in well under a
    microsecond; ``slow`` for anything else (compressed, damaged, not an envelope),
    which :meth:`ValueCodec.decode` then takes, with the reason if it fails.

    >>> decode_fast(ValueCodec().encode([1, 2]).data, None), decode_fast(b"junk", None)
    ([1, 2], None)
    """
    if len(data) >= HEADER_SIZE:
        magic, version, flags, _, checksum = _HEADER.unpack_from(data)
        if magic == MAGIC and version == FORMAT_VERSION and not flags & ~_FAST_FLAGS:
            payload = memoryview(data)[HEADER_SIZE:]
            if zlib.crc32(payload) == checksum:
                try:
                    return orjson.loads(payload)
                except orjson.JSONDecodeError:
                    pass
    return slow


def envelope_flags(data: bytes) -> int:
    """The flags of stored bytes from the header alone (0 if they are not an envelope).

    >>> envelope_flags(ValueCodec().encode(1, origin="edge").data) & FLAG_EDGE > 0
    True
    """
    if len(data) < HEADER_SIZE or data[:2] != MAGIC:
        return 0
    return data[3]


def written_ms(data: bytes) -> int:
    """When an envelope was written (ms since the epoch), from the header alone."""
    return int.from_bytes(data[4:12], "big")


def _inflate(payload: memoryview) -> bytes:
    if len(payload) < 4:
        raise CodecError("corrupt value: compressed payload is truncated")
    declared = int.from_bytes(payload[:4], "little")
    if declared > MAX_VALUE_BYTES:
        raise CodecError(f"corrupt value: declares {declared} uncompressed bytes")
    try:
        return bytes(lz4.block.decompress(payload))
    except lz4.block.LZ4BlockError as exc:
        raise CodecError(f"corrupt value: lz4 payload does not decompress ({exc})") from None
