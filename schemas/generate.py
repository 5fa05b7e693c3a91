"""Write (or check) the ``*.schema.json`` files from the contracts.

python -m schemas.generate          # rewrite the files
python -m schemas.generate --check  # exit 1 if a file is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from schemas import contracts
from schemas.spec import SCHEMA_DIALECT, FieldSpec, json_schema

__all__ = ["SCHEMA_FILES", "render", "schema_documents"]

_BASE: Final = "urn:cachecast:schema:v1:"
_HERE: Final = Path(__file__).resolve().parent

_CONTRACTS: Final[dict[str, tuple[str, str, tuple[FieldSpec, ...]]]] = {
    "access_event": (
        "AccessEvent",
        "One cache operation reported by a client. A Kafka record on the access topic holds "
        "one of these, or a JSON array of them (see access_record.schema.json).",
        contracts.ACCESS_EVENT,
    ),
    "warmup_command": (
        "WarmupCommand",
        "A prediction that a key will be read soon: load it into the cache before the "
        "deadline, with the given TTL.",
        contracts.WARMUP_COMMAND,
    ),
    "warmup_outcome": (
        "WarmupOutcome",
        "What the Redis writer did with one warmup command.",
        contracts.WARMUP_OUTCOME,
    ),
    "metrics_snapshot": (
        "MetricsSnapshot",
        "Aggregated statistics of one namespace over one window, published every window.",
        contracts.METRICS_SNAPSHOT,
    ),
}

SCHEMA_FILES: Final = tuple(f"{name}.schema.json" for name in (*_CONTRACTS, "access_record"))


def schema_documents() -> dict[str, dict[str, Any]]:
    """Every schema file's name and content."""
    docs = {
        f"{name}.schema.json": json_schema(
            specs, title=title, schema_id=f"{_BASE}{name}", description=text
        )
        for name, (title, text, specs) in _CONTRACTS.items()
    }
    event_ref = {"$ref": f"{_BASE}access_event"}
    docs["access_record.schema.json"] = {
        "$schema": SCHEMA_DIALECT,
        "$id": f"{_BASE}access_record",
        "title": "AccessRecord",
        "description": (
            f"The value of one Kafka record on the access topic: one AccessEvent or an array "
            f"of at most {contracts.MAX_BATCH_EVENTS}. The whole record must not exceed "
            f"{contracts.MAX_RECORD_BYTES} bytes (a limit JSON Schema cannot express). In a "
            "batch, each bad event is rejected on its own; the others are kept."
        ),
        "oneOf": [
            event_ref,
            {"type": "array", "items": event_ref, "maxItems": contracts.MAX_BATCH_EVENTS},
        ],
    }
    return docs


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, doc in schema_documents().items():
        path = _HERE / name
        text = render(doc)
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date: " + ", ".join(stale) + " (run python -m schemas.generate)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
