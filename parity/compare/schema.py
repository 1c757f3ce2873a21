"""Validation of the JSON the tools write against ``parity/schemas/`` (draft 2020-12).

``check_json_file(path, kind)`` parses strictly (a bare NaN/Infinity token is an error, as in
every strict JSON parser) and validates against ``schemas/<kind>.schema.json``. Used by the
tests on every report they produce; ``jsonschema`` is in the ``test`` extra.
"""
from __future__ import annotations

import json
import os

from parity.files import PACKAGE_DIR

SCHEMA_DIR = os.path.join(PACKAGE_DIR, "schemas")
KINDS = ("report", "diagnosis")


def schema(kind: str) -> dict:
    with open(os.path.join(SCHEMA_DIR, f"{kind}.schema.json"), encoding="utf-8") as f:
        return json.load(f)


def _no_constant(token: str):
    raise ValueError(f"bare {token} token: not strict JSON")


def strict_loads(text: str):
    """``json.loads`` that rejects NaN, Infinity and -Infinity, as strict parsers do."""
    return json.loads(text, parse_constant=_no_constant)


def validate(doc, kind: str) -> None:
    """Raises ``jsonschema.ValidationError`` when ``doc`` breaks the schema of ``kind``."""
    import jsonschema
    jsonschema.Draft202012Validator(schema(kind)).validate(doc)


def check_json_file(path: str, kind: str):
    """The document at ``path``, parsed strictly and validated; returns it."""
    with open(path, encoding="utf-8") as f:
        doc = strict_loads(f.read())
    validate(doc, kind)
    return doc
