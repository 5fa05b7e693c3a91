"""The published JSON Schemas accept exactly what the decoders accept."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import schemas
from schemas import contracts, decode
from schemas.generate import SCHEMA_FILES, render, schema_documents
from schemas.spec import FieldSpec

SCHEMA_DIR = Path(schemas.__file__).parent


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Any:
    """JSON Schema's ``pattern`` uses ECMA-262 regexes, where ``$`` never matches
    before a trailing newline; Python's ``re`` would. Check with ECMA's meaning."""
    if isinstance(instance, str) and not re.search(pattern.replace("$", r"\Z"), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern}
)


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text())
    return doc


def _resource(doc: dict[str, Any]) -> Resource[Any]:
    # Without its "$schema", a referenced schema is checked by the referring validator's
    # class (ECMA patterns); with it, jsonschema would pick the stock 2020-12 validator.
    return DRAFT202012.create_resource({k: v for k, v in doc.items() if k != "$schema"})


REGISTRY = Registry().with_resources(
    (doc["$id"], _resource(doc)) for doc in map(_load, SCHEMA_FILES)
)

CASES = [
    ("access_event.schema.json", contracts.ACCESS_EVENT, decode.decode_access_event),
    ("warmup_command.schema.json", contracts.WARMUP_COMMAND, decode.decode_warmup_command),
    ("warmup_outcome.schema.json", contracts.WARMUP_OUTCOME, decode.decode_warmup_outcome),
    ("metrics_snapshot.schema.json", contracts.METRICS_SNAPSHOT, decode.decode_metrics_snapshot),
]


def test_schema_files_are_generated_from_the_contracts() -> None:
    for name, doc in schema_documents().items():
        assert (SCHEMA_DIR / name).read_text() == render(doc), f"{name} is stale"


@pytest.mark.parametrize(("name", "specs", "_decoder"), CASES)
def test_records_have_exactly_the_contract_fields(
    name: str, specs: tuple[FieldSpec, ...], _decoder: Any
) -> None:
    records: dict[str, Any] = {
        "access_event.schema.json": schemas.AccessEvent,
        "warmup_command.schema.json": schemas.WarmupCommand,
        "warmup_outcome.schema.json": schemas.WarmupOutcome,
        "metrics_snapshot.schema.json": schemas.MetricsSnapshot,
    }
    record = records[name]
    assert list(record._options.fields) == [s.name for s in specs]
    EcmaValidator.check_schema(_load(name))


# -- documents near the contract: valid ones, and each field bent a little -------------

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _edge_numbers(spec: FieldSpec) -> st.SearchStrategy[Any]:
    points: list[float] = [0, 1, -1, 0.5, 2.0]
    for bound in (spec.minimum, spec.maximum):
        if bound is not None:
            points += [bound, bound - 1, bound + 1, bound - 0.5, bound + 0.5, bound * 1000]
    return st.sampled_from(points)


def _valid_value(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Values inside the contract (as the spec describes it, independently of the code)."""
    lo, hi = spec.minimum, spec.maximum
    if spec.kind == "number":
        return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)
    if spec.kind == "integer":
        ints = st.integers(min_value=int(lo or 0), max_value=int(hi if hi is not None else 2**40))
        return ints | ints.map(float)
    if spec.kind == "boolean":
        return st.booleans()
    if spec.kind == "string_array":
        item = st.text(min_size=spec.min_length or 0, max_size=8)
        return st.lists(item, max_size=spec.max_items or 4)
    if spec.enum:
        return st.sampled_from(spec.enum)
    max_len = spec.max_length or 32
    if spec.pattern:
        return st.from_regex(spec.pattern, fullmatch=True).filter(lambda v: len(v) <= max_len)
    return st.text(min_size=spec.min_length or 0, max_size=12) | st.just("k" * max_len)


def _bent_value(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Values at and just past the contract's edges, or of the wrong type."""
    if spec.kind in ("number", "integer"):
        bent = _edge_numbers(spec) | st.sampled_from([0.25, 1e300, -1e-300, True, "1"])
    elif spec.kind == "boolean":
        bent = st.sampled_from([0, 1, "true", "false"])
    elif spec.kind == "string":
        limit = spec.max_length or 32
        edges = ["", "x" * limit, "x" * (limit + 1), "ok\n", "a:b", "é" * limit, "é" * (limit + 1)]
        if spec.enum:
            edges += [e.upper() for e in spec.enum] + [spec.enum[0] + " "]
        bent = st.sampled_from(edges) | st.text(max_size=6)
    else:
        n = spec.max_items or 4
        bent = st.sampled_from([[""], ["t"] * n, ["t"] * (n + 1), ["x" * 129], [1], "t"])
    return bent | _json_values


@st.composite
def _near_documents(draw: st.DrawFn, specs: tuple[FieldSpec, ...]) -> dict[str, Any]:
    """A valid document with zero, one or two fields bent, dropped or nulled."""
    doc: dict[str, Any] = {}
    for spec in specs:
        if spec.required or draw(st.booleans()):
            doc[spec.name] = draw(_valid_value(spec))
    for _ in range(draw(st.integers(0, 2))):
        spec = draw(st.sampled_from(specs))
        action = draw(st.integers(0, 9))
        if action == 0:
            doc.pop(spec.name, None)
        elif action == 1:
            doc[spec.name] = None
        else:
            doc[spec.name] = draw(_bent_value(spec))
    if draw(st.integers(0, 4)) == 0:
        doc[draw(st.text(max_size=6))] = draw(_json_values)
    return doc


@pytest.mark.parametrize(("name", "specs", "decoder"), CASES)
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_schema_accepts_exactly_what_the_decoder_accepts(
    name: str, specs: tuple[FieldSpec, ...], decoder: Any, data: st.DataObject
) -> None:
    doc = data.draw(_near_documents(specs))
    raw = orjson.dumps(doc)
    schema_ok = EcmaValidator(_load(name), registry=REGISTRY).is_valid(orjson.loads(raw))
    try:
        decoder(raw)
        decoder_ok = True
    except schemas.InvalidEvent:
        decoder_ok = False
    assert schema_ok == decoder_ok, f"schema says {schema_ok}, decoder says {decoder_ok}: {doc}"


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(_near_documents(contracts.ACCESS_EVENT), max_size=6)
    | _near_documents(contracts.ACCESS_EVENT)
)
def test_access_record_schema_matches_batch_decoding(events: Any) -> None:
    raw = orjson.dumps(events)
    validator = EcmaValidator(_load("access_record.schema.json"), registry=REGISTRY)
    schema_ok = validator.is_valid(orjson.loads(raw))
    try:
        result = schemas.decode_access(raw)
        decoder_ok = not result.rejects
    except schemas.InvalidEvent:
        decoder_ok = False
    assert schema_ok == decoder_ok


MINIMAL_VALID: dict[str, dict[str, Any]] = {
    "access_event.schema.json": {
        "ts": 1.7e9,
        "namespace": "users",
        "key": "42",
        "op": "get",
        "outcome": "hit",
    },
    "warmup_command.schema.json": {
        "namespace": "users",
        "key": "42",
        "score": 0.9,
        "reason": "ensemble",
        "ttl": 60,
        "deadline": 1.7e9,
    },
    "warmup_outcome.schema.json": {
        "namespace": "users",
        "key": "42",
        "status": "written",
        "ts": 1.7e9,
    },
    "metrics_snapshot.schema.json": {
        "namespace": "users",
        "window_start": 1.7e9,
        "window_end": 1.7e9 + 10,
    },
}


def _edges(spec: FieldSpec) -> list[Any]:
    limit = spec.max_length or 32
    values: list[Any] = [None, True, False, 0, 1, -1, 0.5, 1.0, "1", "", [], {}, ["t"]]
    for bound in (spec.minimum, spec.maximum):
        if bound is not None:
            values += [bound, bound - 1, bound + 1, bound - 0.5, bound + 0.5, bound * 1000, -bound]
    values += ["x" * limit, "x" * (limit + 1), "é" * limit, "é" * (limit + 1), "ok\n", "a:b"]
    values += [e for e in spec.enum or ()] + [e.upper() for e in spec.enum or ()]
    n = spec.max_items or 4
    values += [["t"] * n, ["t"] * (n + 1), [""], ["x" * 128], ["x" * 129], [1]]
    return values


@pytest.mark.parametrize(("name", "specs", "decoder"), CASES)
def test_schema_and_decoder_agree_at_every_edge(
    name: str, specs: tuple[FieldSpec, ...], decoder: Any
) -> None:
    """Every field, set to each edge value in an otherwise valid document."""
    base = MINIMAL_VALID[name]
    validator = EcmaValidator(_load(name), registry=REGISTRY)
    checked = 0
    for spec in specs:
        for value in _edges(spec):
            doc = {**base, spec.name: value}
            schema_ok = validator.is_valid(doc)
            try:
                decoder(orjson.dumps(doc))
                decoder_ok = True
            except schemas.InvalidEvent:
                decoder_ok = False
            assert schema_ok == decoder_ok, f"{spec.name}={value!r}: schema {schema_ok}"
            checked += 1
    assert checked > 30 * len(specs) // 2
