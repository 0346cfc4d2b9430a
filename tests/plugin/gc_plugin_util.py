"""Helpers of the plugin tests: the inner project's NumPy functions, a small
JSON Schema validator, and helpers to read the inner run's output."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "docs" / "gradcheck-report.schema.json"

#: NumPy functions for the inner test files (fast: a check takes milliseconds)
HELPERS = '''
import numpy as np

X = np.array([1.0, -2.0, 3.0])


def square(x):
    return np.sum(x ** 2)


def square_grad(x):
    return (2 * x,)


def square_off(x):
    """Off by 1 %: uncomfortable."""
    return (2.02 * x,)


def square_wrong(x):
    """Off by 50 %: wrong."""
    return (3.0 * x,)


def square_scaled(factor):
    return lambda x: (2 * factor * x,)


def terms(w):
    return {"data": np.sum(w ** 2), "reg": 0.5 * np.sum(w ** 4)}


def terms_grad(w):
    return {"data": (2 * w,), "reg": (2 * w ** 3,)}
'''


def section(output: str) -> list[str]:
    """The lines of the "gradient checks" section (between its separator and the next)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(r"=+ gradient checks =+", line))
    out = []
    for line in lines[start + 1 :]:
        if re.match(r"^(=|_){3,}", line):
            break
        out.append(line)
    return out


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


# -- a small JSON Schema (2020-12) validator, for the keywords our schema uses ---------

_ANNOTATIONS = {"$schema", "$id", "title", "description", "$comment", "examples", "default"}
_KNOWN = _ANNOTATIONS | {
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "minimum",
    "exclusiveMinimum",
    "$ref",
    "$defs",
    "allOf",
    "anyOf",
}


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    raise ValueError(f"unknown type {name!r} in the schema")


def schema_errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$"):
    """Yield one message per violation (an empty iteration: valid)."""
    unknown = set(schema) - _KNOWN
    if unknown:
        raise ValueError(f"the validator does not know {sorted(unknown)} (at {path})")
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        yield from schema_errors(value, target, root, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, t) for t in types):
            yield f"{path}: {value!r:.60} is not of type {types}"
            return
    if "const" in schema and value != schema["const"]:
        yield f"{path}: {value!r:.60} is not {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        yield f"{path}: {value!r:.60} is not one of {schema['enum']}"
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            yield f"{path}: {value} < minimum {schema['minimum']}"
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            yield f"{path}: {value} <= exclusiveMinimum {schema['exclusiveMinimum']}"
    for sub in schema.get("allOf", []):
        yield from schema_errors(value, sub, root, path)
    if "anyOf" in schema:
        each = [list(schema_errors(value, sub, root, path)) for sub in schema["anyOf"]]
        if all(each):
            yield f"{path}: {value!r:.60} matches none of anyOf"
            for errors in each:  # why, for each alternative
                yield from errors
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                yield f"{path}: missing required {key!r}"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                yield from schema_errors(item, props[key], root, f"{path}.{key}")
            elif extra is False:
                yield f"{path}: unexpected property {key!r}"
            elif isinstance(extra, dict):
                yield from schema_errors(item, extra, root, f"{path}.{key}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            yield f"{path}: fewer than {schema['minItems']} items"
        if "items" in schema:
            for i, item in enumerate(value):
                yield from schema_errors(item, schema["items"], root, f"{path}[{i}]")


def validate_report(doc: dict[str, Any]) -> None:
    """Validate a JSON report against docs/gradcheck-report.schema.json (and with
    `jsonschema` too, where it happens to be installed)."""
    schema = json.loads(SCHEMA_PATH.read_text())
    errors = list(schema_errors(doc, schema, schema))
    assert not errors, "\n".join(errors[:20])
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.Draft202012Validator(schema).validate(doc)
