"""The contract document itself: valid OpenAPI 3.2, complete, consistent with SPEC.md."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from openapi_spec_validator import OpenAPIV32SpecValidator, validate
from openapi_spec_validator.versions.shortcuts import get_spec_version
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from openapi import DOCUMENT_PATH, SPEC_PATH, contract_version, load_document

EXPECTED_OPERATIONS = {
    "submitInference": ("post", "/v1/inference"),
    "streamInferenceJob": ("get", "/v1/inference/{job_id}/stream"),
    "getInferenceJob": ("get", "/v1/inference/{job_id}"),
    "cancelInferenceJob": ("delete", "/v1/inference/{job_id}"),
    "getHealth": ("get", "/health"),
    "getMetrics": ("get", "/metrics"),
}
JOB_OPERATIONS = {
    "submitInference",
    "streamInferenceJob",
    "getInferenceJob",
    "cancelInferenceJob",
}
HTTP_METHODS = {
    "get",
    "put",
    "post",
    "delete",
    "options",
    "head",
    "patch",
    "trace",
    "query",
}
PROBLEM_REF = "#/components/schemas/Problem"
STREAM_PATH = "/v1/inference/{job_id}/stream"

EXPECTED_RULES = {
    "DC-1": ["MUST"] * 7 + ["MAY", "MAY"] + ["MUST"] * 3,
    "DC-2": ["MUST"] * 7 + ["SHOULD", "MUST", "MUST", "SHOULD", "MUST", "MUST", "SHOULD", "MUST"],
    "DC-3": ["MUST"] * 4,
    "DC-4": ["MUST"] * 3,
    "DC-5": ["MUST"] * 6,
}
#: DC-C-1 ... (callers)
EXPECTED_CALLER_RULES = ["MUST"] * 9 + ["SHOULD"] * 2
RULE_ID = re.compile(r"DC-\d+\.\d+|DC-C-\d+")
RULE_HEADING = re.compile(r"^### (\S+) \((MUST|SHOULD|MAY)\) \S", re.MULTILINE)
ANY_DC_TOKEN = re.compile(r"DC-[0-9A-Za-z.]*[0-9A-Za-z]")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return copy.deepcopy(load_document())


@pytest.fixture(scope="module")
def spec_text() -> str:
    return SPEC_PATH.read_text(encoding="utf-8")


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """Follow local ``$ref`` chains (``#/...``) to the referenced node."""
    seen: set[str] = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert isinstance(ref, str) and ref.startswith("#/"), f"non-local $ref {ref!r}"
        assert ref not in seen, f"$ref cycle at {ref}"
        seen.add(ref)
        node = doc
        for part in ref[2:].split("/"):
            key = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict) and key in node, f"unresolvable $ref {ref}"
            node = node[key]
    return node


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield path, method, op


def walk_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from walk_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_refs(value)


def schema_validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A JSON Schema validator for ``schema`` whose ``#/...`` refs resolve in ``doc``."""
    resource: Resource[Any] = DRAFT202012.create_resource({"$id": "urn:dualcall", **doc})
    registry: Registry[Any] = Registry().with_resource("urn:dualcall", resource)
    rooted = {"$ref": "urn:dualcall" + schema["$ref"]} if "$ref" in schema else schema
    return Draft202012Validator(rooted, registry=registry)


# --- the document as a whole -------------------------------------------------------------------


def test_document_is_valid_openapi_3_2(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.2.0"
    assert str(get_spec_version(doc)) == "OpenAPIV3.2"
    validate(doc)  # auto-detects 3.2
    validate(doc, cls=OpenAPIV32SpecValidator)


def test_validator_rejects_a_broken_copy(doc: dict[str, Any]) -> None:
    broken = copy.deepcopy(doc)
    broken["paths"]["/health"]["get"]["responses"]["200"]["bogus"] = 1
    with pytest.raises(Exception, match="bogus"):
        validate(broken)


def test_info_and_loader() -> None:
    doc = load_document()
    assert doc["info"]["title"] == "dualcall worker contract"
    assert doc["info"]["version"] == "1.2.0"
    assert contract_version() == "1.2.0"
    assert DOCUMENT_PATH.is_file()
    assert SPEC_PATH.is_file()
    assert load_document() is doc  # cached


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = set(walk_refs(doc))
    assert refs
    for ref in refs:
        resolve(doc, {"$ref": ref})


def test_component_schemas_are_valid_json_schema(doc: dict[str, Any]) -> None:
    for name, schema in doc["components"]["schemas"].items():
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:  # pragma: no cover - failure path
            pytest.fail(f"components.schemas.{name}: {exc}")


# --- operations ------------------------------------------------------------------------------


def test_expected_operations_exist(doc: dict[str, Any]) -> None:
    found = {op["operationId"]: (method, path) for path, method, op in operations(doc)}
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids)), "duplicate operationId"
    for operation_id, where in EXPECTED_OPERATIONS.items():
        assert found.get(operation_id) == where, operation_id


def test_security(doc: dict[str, Any]) -> None:
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    for _, _, op in operations(doc):
        if op["operationId"] in JOB_OPERATIONS:
            assert op["security"] == [{"bearerAuth": []}, {}], op["operationId"]
            assert "401" in op["responses"], op["operationId"]
        else:
            assert op.get("security") == [], op["operationId"]
            assert "401" not in op["responses"], op["operationId"]


def test_every_error_response_is_problem_json(doc: dict[str, Any]) -> None:
    checked = 0
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            if not status.startswith(("4", "5")) or op["operationId"] == "getHealth":
                continue
            content = resolve(doc, response).get("content", {})
            where = f"{method.upper()} {path} {status}"
            assert list(content) == ["application/problem+json"], where
            assert content["application/problem+json"]["schema"] == {"$ref": PROBLEM_REF}, where
            checked += 1
    assert checked >= 14


def test_problem_schema(doc: dict[str, Any]) -> None:
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert problem.get("additionalProperties", True) is not False
    assert problem["properties"]["status"]["minimum"] == 400
    assert problem["properties"]["status"]["maximum"] == 599


def test_error_status_codes(doc: dict[str, Any]) -> None:
    def statuses(path: str, method: str) -> set[str]:
        return set(doc["paths"][path][method]["responses"])

    assert statuses("/v1/inference", "post") == {
        "202",
        "400",
        "401",
        "413",
        "415",
        "422",
        "503",
    }
    assert statuses(STREAM_PATH, "get") == {"200", "204", "400", "401", "404", "409", "503"}
    assert statuses("/v1/inference/{job_id}", "get") == {"200", "401", "404"}
    assert statuses("/v1/inference/{job_id}", "delete") == {"202", "401", "404"}
    assert statuses("/health", "get") == {"200", "503"}


def test_submit_response_headers_and_links(doc: dict[str, Any]) -> None:
    post = doc["paths"]["/v1/inference"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InferenceRequest"
    }
    accepted = post["responses"]["202"]
    assert accepted["headers"]["Location"]["required"] is True
    assert accepted["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/SubmitResponse"}
    links = accepted["links"]
    assert {name: link["operationId"] for name, link in links.items()} == {
        "stream": "streamInferenceJob",
        "status": "getInferenceJob",
        "cancel": "cancelInferenceJob",
    }
    for link in links.values():
        assert link["parameters"] == {"job_id": "$response.body#/job_id"}
    retry_after = resolve(doc, resolve(doc, post["responses"]["503"])["headers"]["Retry-After"])
    assert retry_after["required"] is True
    assert retry_after["schema"]["type"] == "integer"


def test_success_responses_carry_contract_version_header(doc: dict[str, Any]) -> None:
    ref = {"$ref": "#/components/headers/Dualcall-Contract-Version"}
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            headers = resolve(doc, response).get("headers", {})
            assert headers.get("Dualcall-Contract-Version") == ref, f"{method} {path} {status}"


def test_inference_request_schema(doc: dict[str, Any]) -> None:
    schema = doc["components"]["schemas"]["InferenceRequest"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["prompt"]
    assert set(schema["properties"]) == {
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
    }
    validator = schema_validator(doc, {"$ref": "#/components/schemas/InferenceRequest"})
    assert validator.is_valid({"prompt": "hi"})
    assert validator.is_valid(
        {
            "prompt": "hi",
            "max_tokens": 4096,
            "temperature": 0,
            "top_p": 1,
            "top_k": 0,
            "seed": 2**63 - 1,
            "stop": ["\n", "END"],
        }
    )
    for bad in [
        {},
        {"prompt": ""},
        {"prompt": "hi", "job_id": "test-job-001"},
        {"prompt": "hi", "max_tokens": 0},
        {"prompt": "hi", "max_tokens": None},
        {"prompt": "hi", "top_p": 0},
        {"prompt": "hi", "temperature": -0.1},
        {"prompt": "hi", "seed": 2**63},
        {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]},
        {"prompt": "hi", "stop": [""]},
    ]:
        assert not validator.is_valid(bad), bad


def test_submit_response_job_id_pattern(doc: dict[str, Any]) -> None:
    validator = schema_validator(doc, {"$ref": "#/components/schemas/SubmitResponse"})
    url = "/v1/inference/AAAAAAAAAAAAAAAAAAAAAA/stream"
    assert validator.is_valid({"job_id": "A" * 22, "sse_url": url, "status_url": "x"})
    assert not validator.is_valid({"job_id": "test-job-001", "sse_url": url})
    assert not validator.is_valid({"job_id": "A" * 22})


def test_job_status_schema(doc: dict[str, Any]) -> None:
    validator = schema_validator(doc, {"$ref": "#/components/schemas/JobStatus"})
    base = {
        "job_id": "A" * 22,
        "state": "queued",
        "tokens_out": 0,
        "created_at": "2025-10-20T00:00:00Z",
        "sse_url": "/v1/inference/x/stream",
    }
    assert validator.is_valid(base)
    assert validator.is_valid(
        {
            **base,
            "started_at": None,
            "finished_at": None,
            "stop_reason": None,
            "error": None,
        }
    )
    assert validator.is_valid({**base, "stop_reason": "eos", "error": {"code": "c", "message": "m"}})
    assert not validator.is_valid({**base, "state": "done"})
    assert not validator.is_valid({**base, "stop_reason": "length"})


# --- the event stream ------------------------------------------------------------------------


def stream_ok(doc: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = doc["paths"][STREAM_PATH]["get"]["responses"]["200"]
    return response


def test_stream_declares_event_stream_with_item_schema(doc: dict[str, Any]) -> None:
    response = stream_ok(doc)
    assert list(response["content"]) == ["text/event-stream"]
    media = response["content"]["text/event-stream"]
    assert "itemSchema" in media
    item = resolve(doc, media["itemSchema"])
    variants = [resolve(doc, v) for v in item["oneOf"]]
    assert len(variants) == 5
    assert all(v["type"] == "object" for v in variants)
    events = {v["properties"].get("event", {}).get("const") for v in variants}
    assert events == {"started", "token", "end", "error", "message"}
    assert response["headers"]["Cache-Control"]["required"] is True
    last_event_id = [p for p in doc["paths"][STREAM_PATH]["get"]["parameters"] if p["name"] == "Last-Event-ID"]
    assert last_event_id and last_event_id[0]["in"] == "header"
    assert last_event_id[0]["schema"]["pattern"] == "^[0-9]+$"


def _event_is_valid(doc: dict[str, Any], event: dict[str, Any]) -> bool:
    """Validate one parsed SSE event the way schemathesis does, contentSchema included."""
    item_ref = stream_ok(doc)["content"]["text/event-stream"]["itemSchema"]
    if not schema_validator(doc, item_ref).is_valid(event):
        return False
    matches = 0
    for variant_ref in resolve(doc, item_ref)["oneOf"]:
        variant = resolve(doc, variant_ref)
        if not schema_validator(doc, variant_ref).is_valid(event):
            continue
        data_schema = variant["properties"]["data"]
        if data_schema.get("contentMediaType") == "application/json":
            try:
                payload = json.loads(event["data"])
            except ValueError:
                continue
            if not Draft202012Validator(data_schema["contentSchema"]).is_valid(payload):
                continue
        matches += 1
    return matches == 1


def test_item_schema_accepts_the_dual_call_stream(doc: dict[str, Any]) -> None:
    stream = [
        {"id": "1", "event": "started", "data": json.dumps({"job_id": "A" * 22})},
        {
            "id": "2",
            "event": "token",
            "data": json.dumps({"index": 0, "text": "a\n[DONE]\r"}),
        },
        {
            "id": "3",
            "event": "end",
            "data": json.dumps({"tokens_out": 1, "stop_reason": "eos"}),
        },
        {"id": "3", "event": "message", "data": "[DONE]"},
        {"data": "[DONE]"},
    ]
    for event in stream:
        assert _event_is_valid(doc, event), event
    error = {
        "id": "2",
        "event": "error",
        "data": json.dumps({"code": "x", "message": "m"}),
    }
    assert _event_is_valid(doc, error)


def test_item_schema_rejects_the_legacy_stream(doc: dict[str, Any]) -> None:
    for event in [
        {"event": "message", "data": "The"},  # raw `data: <token>` line
        {"event": "narration", "data": "loading"},
        {"event": "token", "data": "raw text"},  # not JSON
        {"id": "2", "event": "token", "data": json.dumps({"text": "x"})},  # no index
        {"id": "2", "event": "token", "data": json.dumps({"index": -1, "text": "x"})},
        {"event": "started", "data": json.dumps({"job_id": "x"})},  # no id
        {
            "id": "x",
            "event": "end",
            "data": json.dumps({"tokens_out": 1, "stop_reason": "eos"}),
        },
        {
            "id": "3",
            "event": "end",
            "data": json.dumps({"tokens_out": 1, "stop_reason": "length"}),
        },
    ]:
        assert not _event_is_valid(doc, event), event


# --- SPEC.md ---------------------------------------------------------------------------------


def test_spec_rule_ids_are_unique_and_well_formed(spec_text: str) -> None:
    headings = RULE_HEADING.findall(spec_text)
    ids = [rule_id for rule_id, _ in headings]
    duplicates = [rule_id for rule_id, count in Counter(ids).items() if count > 1]
    assert not duplicates, duplicates
    for rule_id in ids:
        assert RULE_ID.fullmatch(rule_id), rule_id
    # every `### ` heading that looks like a rule is parsed as one
    rule_like = re.findall(r"^### DC-\S*", spec_text, re.MULTILINE)
    assert len(rule_like) == len(ids)


def test_spec_rules_and_levels(spec_text: str) -> None:
    levels = dict(RULE_HEADING.findall(spec_text))
    expected = {
        f"{section}.{number}": level
        for section, section_levels in EXPECTED_RULES.items()
        for number, level in enumerate(section_levels, start=1)
    }
    expected |= {f"DC-C-{number}": level for number, level in enumerate(EXPECTED_CALLER_RULES, start=1)}
    assert levels == expected


def test_spec_mentions_only_defined_rules(spec_text: str) -> None:
    defined = {rule_id for rule_id, _ in RULE_HEADING.findall(spec_text)}
    sections = {re.sub(r"[.-]\d+$", "", rule_id) for rule_id in defined}
    for token in ANY_DC_TOKEN.findall(spec_text):
        assert token in defined or token in sections, f"undefined rule id {token!r} in SPEC.md"


def test_document_cites_only_defined_rules(doc: dict[str, Any], spec_text: str) -> None:
    defined = {rule_id for rule_id, _ in RULE_HEADING.findall(spec_text)}
    cited = set(RULE_ID.findall(DOCUMENT_PATH.read_text(encoding="utf-8")))
    assert cited, "the OpenAPI document should cite rule ids"
    assert cited <= defined, sorted(cited - defined)


def test_spec_explains_the_legacy_shape(spec_text: str) -> None:
    start = spec_text.index("## The legacy direct-SSE shape")
    section = spec_text[start : spec_text.index("## Versioning")]
    for rule_id in ["DC-1.2", "DC-1.3", "DC-1.4", "DC-2.3", "DC-2.5"]:
        assert f"**{rule_id}**" in section, rule_id
    assert len(re.findall(r"^\d\. ", section, re.MULTILINE)) == 4
    assert contract_version() in spec_text.splitlines()[0]
