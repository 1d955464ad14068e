"""What the suite reads from the contract document (the only truth it shares with workers)."""

from __future__ import annotations

import functools
from typing import Any

import openapi

EVENT_SCHEMAS = {
    "started": "SseStartedEvent",
    "token": "SseTokenEvent",
    "end": "SseEndEvent",
    "error": "SseErrorEvent",
}


def contract_version() -> str:
    return openapi.contract_version()


@functools.cache
def event_data_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of each event type's ``data`` payload (the ``contentSchema`` in the document)."""
    schemas = openapi.load_document()["components"]["schemas"]
    return {event: schemas[name]["properties"]["data"]["contentSchema"] for event, name in EVENT_SCHEMAS.items()}


def defined_members(event_type: str) -> frozenset[str]:
    """The members the contract defines in an event type's ``data`` (empty for an unknown type)."""
    schema = event_data_schemas().get(event_type) or {}
    return frozenset(schema.get("properties") or ())


@functools.cache
def max_tokens_limit() -> int:
    """The contract's largest ``max_tokens`` (a worker MAY clamp to a lower advertised cap, DC-1.1)."""
    schema = openapi.load_document()["components"]["schemas"]["InferenceRequest"]
    return int(schema["properties"]["max_tokens"]["maximum"])


@functools.cache
def runtime_limit_codes() -> frozenset[str]:
    """``error`` codes a valid request may end with (DC-2.15): the document's ``x-dualcall-runtime-limit-codes``."""
    schema = openapi.load_document()["components"]["schemas"]["SseErrorEvent"]
    return frozenset(str(code) for code in schema.get("x-dualcall-runtime-limit-codes", ()))


def schema_errors(name: str, payload: Any) -> list[str]:
    """Violations of ``payload`` against ``#/components/schemas/<name>`` of the document."""
    import jsonschema

    document = openapi.load_document()
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(part) for part in error.absolute_path) or '(body)'}: {error.message}"
        for error in validator.iter_errors(payload)
    ]


def data_errors(event_type: str, payload: Any) -> list[str]:
    """Schema violations of one event's JSON data (empty when valid)."""
    import jsonschema

    schema = event_data_schemas().get(event_type)
    if schema is None:
        return [f"unknown event type {event_type!r} (expected one of {', '.join(EVENT_SCHEMAS)})"]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(part) for part in error.absolute_path) or '(data)'}: {error.message}"
        for error in validator.iter_errors(payload)
    ]
