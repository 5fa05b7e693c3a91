"""One description of every field, from which both the validator and the JSON Schema come.

The decoder and the published ``*.schema.json`` files must accept exactly the
same documents. Rather than keep two hand-written rule sets in step, each
contract is a tuple of :class:`FieldSpec`; :func:`compile_validator` turns it
into a fast checking function and :func:`json_schema` into a JSON Schema
(draft 2020-12). ``tests/unit/schemas`` proves the two agree, with hypothesis.

Rules common to every contract:

* a document is a JSON object; fields it does not know are ignored (so that a
  newer producer can add fields without breaking older workers);
* integers may be written ``3`` or ``3.0`` (JSON Schema's definition); booleans
  are never numbers;
* strings are measured in Unicode code points, as JSON Schema does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "SCHEMA_DIALECT",
    "FieldError",
    "FieldSpec",
    "Validator",
    "compile_validator",
    "json_schema",
]

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

Kind = Literal["number", "integer", "string", "boolean", "string_array"]


class FieldError(ValueError):
    """A field is missing or has a bad value; ``field`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """The contract of one field.

    ``required`` fields must be present; optional ones take ``default`` when
    absent. ``nullable`` fields also accept ``null`` (stored as ``None``).
    """

    name: str
    kind: Kind
    description: str
    required: bool = False
    default: Any = None
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    max_items: int | None = None
    hint: Callable[[Any], str | None] | None = field(default=None, compare=False)


Validator = Callable[[Mapping[str, Any]], dict[str, Any]]
_Check = Callable[[Any], Any]


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _range_check(spec: FieldSpec) -> Callable[[float], str | None]:
    lo, hi = spec.minimum, spec.maximum

    def check(value: float) -> str | None:
        if lo is not None and value < lo:
            return f"{_short(value)} is below the minimum {lo:g}"
        if hi is not None and value > hi:
            return f"{_short(value)} is above the maximum {hi:g}"
        return None

    return check


def _number_check(spec: FieldSpec) -> _Check:
    in_range = _range_check(spec)

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FieldError(spec.name, f"expected a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise FieldError(spec.name, "expected a finite number")
        problem = in_range(value)
        if problem is not None:
            extra = spec.hint(value) if spec.hint is not None else None
            raise FieldError(spec.name, problem + (f" ({extra})" if extra else ""))
        return float(value)

    return check


def _integer_check(spec: FieldSpec) -> _Check:
    in_range = _range_check(spec)

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FieldError(spec.name, f"expected an integer, got {_describe(value)}")
        if isinstance(value, float):
            if not value.is_integer():
                raise FieldError(spec.name, f"expected an integer, got {_short(value)}")
            value = int(value)
        problem = in_range(value)
        if problem is not None:
            raise FieldError(spec.name, problem)
        return value

    return check


def _string_check(spec: FieldSpec) -> _Check:
    min_len, max_len = spec.min_length, spec.max_length
    regex = re.compile(spec.pattern) if spec.pattern else None
    allowed = frozenset(spec.enum) if spec.enum else None
    choices = ", ".join(spec.enum) if spec.enum else ""

    def check(value: Any) -> Any:
        if not isinstance(value, str):
            raise FieldError(spec.name, f"expected a string, got {_describe(value)}")
        if allowed is not None and value not in allowed:
            raise FieldError(spec.name, f"{_short(value)} is not one of: {choices}")
        n = len(value)
        if min_len is not None and n < min_len:
            raise FieldError(spec.name, f"must have at least {min_len} character(s), got {n}")
        if max_len is not None and n > max_len:
            raise FieldError(spec.name, f"is {n} characters long; the limit is {max_len}")
        if regex is not None and regex.fullmatch(value) is None:
            raise FieldError(spec.name, f"{_short(value)} does not match {spec.pattern}")
        return value

    return check


def _boolean_check(spec: FieldSpec) -> _Check:
    def check(value: Any) -> Any:
        if not isinstance(value, bool):
            raise FieldError(spec.name, f"expected true or false, got {_describe(value)}")
        return value

    return check


def _string_array_check(spec: FieldSpec) -> _Check:
    max_items = spec.max_items
    item = _string_check(
        FieldSpec(
            name=f"{spec.name}[]",
            kind="string",
            description="",
            min_length=spec.min_length,
            max_length=spec.max_length,
            pattern=spec.pattern,
        )
    )

    def check(value: Any) -> Any:
        if not isinstance(value, list):
            raise FieldError(spec.name, f"expected an array of strings, got {_describe(value)}")
        if max_items is not None and len(value) > max_items:
            raise FieldError(spec.name, f"has {len(value)} items; the limit is {max_items}")
        return [item(v) for v in value]

    return check


_CHECKS: Final[dict[str, Callable[[FieldSpec], _Check]]] = {
    "number": _number_check,
    "integer": _integer_check,
    "string": _string_check,
    "boolean": _boolean_check,
    "string_array": _string_array_check,
}


def compile_validator(specs: tuple[FieldSpec, ...]) -> Validator:
    """Build a function that checks a decoded JSON object and returns clean fields.

    The result has every field of the contract (defaults filled in, integers as
    ``int``, numbers as ``float``) and nothing else. The first problem found
    raises :class:`FieldError`.

    The function is generated source, one straight-line test per field for the
    common case (right type, in range), so a valid event costs about a
    microsecond; anything unusual (an integer written ``3.0``, a bad value) goes
    to that field's full check, which normalises it or raises the precise error.
    """
    names: dict[str, Any] = {"_MISSING": _MISSING, "FieldError": FieldError}
    lines = ["def validate(doc):", "    get = doc.get"]
    out: list[str] = []
    for i, spec in enumerate(specs):
        check = f"_check{i}"
        names[check] = _CHECKS[spec.kind](spec)
        v = f"v{i}"
        lines.append(f"    {v} = get({spec.name!r}, _MISSING)")
        if spec.required:
            lines.append(f"    if {v} is _MISSING:")
            lines.append(f"        raise FieldError({spec.name!r}, 'is required but missing')")
            branch = "if"
        else:
            default = f"_default{i}"
            names[default] = spec.default
            lines.append(f"    if {v} is _MISSING:")
            copy = isinstance(spec.default, list | tuple)
            lines.append(f"        {v} = list({default})" if copy else f"        {v} = {default}")
            branch = "elif"
        if spec.nullable:
            lines.append(f"    {branch} {v} is None:")
            lines.append("        pass")
            branch = "elif"
        fast = _fast_test(spec, v, i, names)
        if fast is not None:
            lines.append(f"    {branch} {fast}:")
            lines.append("        pass")
        lines.append("    else:" if branch == "elif" or fast is not None else "    if True:")
        lines.append(f"        {v} = {check}({v})")
        out.append(f"{spec.name!r}: {v}")
    lines.append("    return {" + ", ".join(out) + "}")
    source = "\n".join(lines)
    exec(compile(source, f"<validator of {len(specs)} fields>", "exec"), names)
    validate: Validator = names["validate"]
    return validate


_MISSING: Final = object()


def _memo_match(regex: re.Pattern[str], limit: int = 4096) -> Callable[[str], bool]:
    """``regex.fullmatch(value) is not None``, remembering up to ``limit`` matching values."""
    good: set[str] = set()

    def matches(value: str) -> bool:
        if value in good:
            return True
        if regex.fullmatch(value) is None:
            return False
        if len(good) < limit:
            good.add(value)
        return True

    return matches


def _fast_test(spec: FieldSpec, v: str, i: int, names: dict[str, Any]) -> str | None:
    """A boolean expression true when ``v`` is valid as it is (no normalising needed)."""
    if spec.kind == "boolean":
        return f"{v} is True or {v} is False"
    if spec.kind in ("number", "integer"):
        typ = "float" if spec.kind == "number" else "int"
        if spec.minimum is None or spec.maximum is None:
            return None  # unbounded: infinities and NaN need the full check
        return f"type({v}) is {typ} and {spec.minimum!r} <= {v} <= {spec.maximum!r}"
    if spec.kind == "string":
        tests = [f"type({v}) is str"]
        if spec.enum is not None:
            names[f"_enum{i}"] = frozenset(spec.enum)
            tests.append(f"{v} in _enum{i}")
        if spec.min_length is not None or spec.max_length is not None:
            lo = spec.min_length or 0
            hi = spec.max_length if spec.max_length is not None else "float('inf')"
            tests.append(f"{lo} <= len({v}) <= {hi}")
        if spec.pattern is not None:
            # Patterned fields (namespaces) take few distinct values: remember good ones.
            names[f"_matches{i}"] = _memo_match(re.compile(spec.pattern))
            tests.append(f"_matches{i}({v})")
        return " and ".join(tests)
    return None  # arrays: the full check


def _field_schema(spec: FieldSpec) -> dict[str, Any]:
    schema: dict[str, Any] = {"description": spec.description}
    if spec.kind == "string_array":
        items: dict[str, Any] = {"type": "string"}
        if spec.min_length is not None:
            items["minLength"] = spec.min_length
        if spec.max_length is not None:
            items["maxLength"] = spec.max_length
        if spec.pattern is not None:
            items["pattern"] = f"^{spec.pattern}$"
        schema["type"] = "array"
        schema["items"] = items
        if spec.max_items is not None:
            schema["maxItems"] = spec.max_items
    else:
        schema["type"] = spec.kind
        if spec.enum is not None:
            schema["enum"] = list(spec.enum)
        if spec.minimum is not None:
            schema["minimum"] = spec.minimum
        if spec.maximum is not None:
            schema["maximum"] = spec.maximum
        if spec.min_length is not None:
            schema["minLength"] = spec.min_length
        if spec.max_length is not None:
            schema["maxLength"] = spec.max_length
        if spec.pattern is not None:
            schema["pattern"] = f"^{spec.pattern}$"
    if spec.nullable:
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema:  # "enum" applies to every type: null must be listed too
            schema["enum"].append(None)
    if not spec.required:
        schema["default"] = list(spec.default) if isinstance(spec.default, tuple) else spec.default
    return schema


def json_schema(
    specs: tuple[FieldSpec, ...], *, title: str, schema_id: str, description: str
) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that accepts exactly what the validator accepts."""
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": schema_id,
        "title": title,
        "description": description,
        "type": "object",
        "required": [s.name for s in specs if s.required],
        "properties": {s.name: _field_schema(s) for s in specs},
        "additionalProperties": True,
    }
