"""The published JSON Schemas are a strict, honest contract (issue #16.8, #14.4): they compile
in strict draft 2020-12 validators (jsonschema here; ajv in strict mode through node when
available), the docs' and README's example bodies validate against them, ``kind`` is
optional where the submit subject says it, and the output does not depend on the Python
version that generated it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
from ci_guard import require

import bus
from bus._codec import _strict

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schema"

# every keyword of draft 2020-12 (core, applicator, validation, unevaluated, format, meta-data, content)
KEYWORDS = {
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$vocabulary",
    "$comment",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "prefixItems",
    "items",
    "contains",
    "properties",
    "patternProperties",
    "additionalProperties",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "type",
    "const",
    "enum",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxContains",
    "minContains",
    "maxProperties",
    "minProperties",
    "required",
    "dependentRequired",
    "format",
    "title",
    "description",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "examples",
    "contentEncoding",
    "contentMediaType",
    "contentSchema",
}
SCHEMA_MAPS = {"properties", "$defs", "patternProperties", "dependentSchemas"}
SCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems"}


def _unknown_keywords(node: Any, where: str = "#") -> list[str]:
    """Every keyword a strict validator (ajv strict: true) would refuse."""
    out: list[str] = []
    if not isinstance(node, dict):
        return out
    for key, value in node.items():
        if key not in KEYWORDS:
            out.append(f"{where}/{key}")
        elif key in SCHEMA_MAPS:
            for name, sub in value.items():
                out += _unknown_keywords(sub, f"{where}/{key}/{name}")
        elif key in SCHEMA_LISTS:
            for i, sub in enumerate(value):
                out += _unknown_keywords(sub, f"{where}/{key}/{i}")
        elif isinstance(value, dict) and key not in ("default", "const", "examples"):
            out += _unknown_keywords(value, f"{where}/{key}")
    return out


def _shipped() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.json"))}


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = _shipped()[name]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_every_shipped_schema_is_strict_draft_2020_12() -> None:
    shipped = _shipped()
    assert shipped == bus.json_schemas(), "docs/schema is out of date: run `taskbus schema --out docs/schema`"
    for name, schema in shipped.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)
        assert _unknown_keywords(schema) == [], name


def test_the_unknown_keyword_check_catches_an_openapi_discriminator() -> None:
    assert _unknown_keywords({"anyOf": [{"type": "string"}], "discriminator": {"propertyName": "kind"}}) == ["#/discriminator"]


def test_kind_is_optional_where_the_subject_implies_it_and_required_in_unions() -> None:
    task, complete, request = _validator("TaskRequest"), _validator("CompleteRequest"), _validator("Request")
    assert task.is_valid({"description": "hello"})
    assert complete.is_valid({"prompt": "hi"})
    assert task.is_valid({"kind": "task", "description": "hello"})
    assert not task.is_valid({"kind": "complete", "description": "hello"})
    assert not task.is_valid({"description": ""})
    assert request.is_valid({"kind": "task", "description": "hello"})
    assert not request.is_valid({"description": "hello"})  # a Request on its own says which it is
    assert not request.is_valid({"kind": "banana", "prompt": "x"})


def _doc_examples() -> list[tuple[str, str, Any]]:
    """(where, schema name, body) for every request/reply example in the README and docs."""
    found: list[tuple[str, str, Any]] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for m in re.finditer(r"nats request \S*\.submit\.(task|complete) '(\{.*?\})'", text):
            name = "TaskRequest" if m.group(1) == "task" else "CompleteRequest"
            found.append((f"{path.name}: nats request", name, json.loads(m.group(2))))
        for m in re.finditer(r"<!-- schema: (\w+) -->\s*```json\n(.*?)```", text, re.DOTALL):
            found.append((f"{path.name}: {m.group(1)} example", m.group(1), json.loads(m.group(2))))
    return found


def test_the_docs_example_bodies_validate_against_the_shipped_schemas() -> None:
    examples = _doc_examples()
    names = {name for _, name, _ in examples}
    assert {"TaskRequest", "CompleteRequest", "SubmitAccepted", "SubmitRejected"} <= names, names
    for where, name, body in examples:
        errors = [e.message for e in _validator(name).iter_errors(body)]
        assert errors == [], (where, errors)
        decoded = bus.decode(json.dumps(body).encode(), getattr(bus, name))  # and the server agrees
        assert type(decoded).__name__ == name


def test_ajv_in_strict_mode_compiles_every_schema(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    require(npm is not None and shutil.which("node") is not None, "node and npm", "apt-get install nodejs npm")
    assert npm is not None
    install = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(tmp_path), "ajv@8", "ajv-formats@3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    require(install.returncode == 0, "ajv from the npm registry", install.stderr.strip()[-200:])
    script = tmp_path / "check.js"
    script.write_text(
        'const Ajv2020 = require("ajv/dist/2020"); const addFormats = require("ajv-formats");\n'
        'const fs = require("fs"), path = require("path"); let bad = 0;\n'
        "for (const f of fs.readdirSync(process.argv[2]).filter(f => f.endsWith('.json'))) {\n"
        "  const ajv = new Ajv2020({strict: true, strictTypes: true, allErrors: true}); addFormats(ajv);\n"
        "  ajv.opts.logger = {log() {}, warn(m) { bad++; console.log(f + ': ' + m); }, error(m) { bad++; console.log(m); }};\n"
        "  try { ajv.compile(JSON.parse(fs.readFileSync(path.join(process.argv[2], f)))); }\n"
        "  catch (e) { bad++; console.log(f + ': ' + e.message); }\n"
        "}\nprocess.exit(bad ? 1 : 0);\n"
    )
    result = subprocess.run(
        ["node", str(script), str(SCHEMAS)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"NODE_PATH": str(tmp_path / "node_modules"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


class _Indented(msgspec.Struct):
    """First line.

    An indented paragraph
        with a nested line.
    """


class _Dedented(msgspec.Struct):
    pass


_Dedented.__doc__ = "First line.\n\nAn indented paragraph\n    with a nested line.\n"  # how 3.13 compiles it


def test_descriptions_do_not_depend_on_how_the_interpreter_keeps_docstring_indentation() -> None:
    def description(typ: type) -> str:
        (_,), components = msgspec.json.schema_components([typ], ref_template="#/$defs/{name}")
        return _strict(components[typ.__name__])["description"]

    assert description(_Indented) == description(_Dedented) == "First line.\n\nAn indented paragraph\n    with a nested line."
    raw = "Something.\n\n    kind: a, b,\n    c."
    assert _strict({"description": raw}) == _strict({"description": "Something.\n\nkind: a, b,\nc."})
    assert _strict({"properties": {"description": {"type": "string"}}}) == {"properties": {"description": {"type": "string"}}}
