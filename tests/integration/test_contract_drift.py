"""One source of truth: the OpenAPI document and the worker must not drift apart.

(a) every documented operation is served and no job route is undocumented; (b) the request
constraints the worker enforces equal the documented ones; (c) response structs only carry
documented fields and carry the required ones; (d) upstream schemathesis, run as users run it,
finds nothing against a mock worker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

import openapi
from workers import schemas
from workers.app import create_app
from workers.engines.mock import MockEngine
from workers.problems import Problem
from workers.web import DOCS_ASSET_PATH

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace", "query"}
#: served for people and tools, deliberately not operations of the contract
UNDOCUMENTED_OK = {"/openapi.json", "/openapi.yaml", "/docs", "/", "/playground", DOCS_ASSET_PATH}
#: keywords that constrain a value; `default`, `title`, `description` do not
CONSTRAINTS = {
    "type",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "enum",
    "const",
    "multipleOf",
}


def document() -> dict[str, Any]:
    return openapi.load_document()


def component(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document()["components"]["schemas"][name]
    return schema


def worker_schemas(*types: type) -> dict[str, dict[str, Any]]:
    _, defs = msgspec.json.schema_components(types)
    return defs


def constraints(schema: dict[str, Any]) -> dict[str, Any]:
    found = {key: value for key, value in schema.items() if key in CONSTRAINTS}
    if "enum" in found:
        found["enum"] = sorted(found["enum"], key=repr)
    if "items" in schema:
        found["items"] = constraints(schema["items"])
    return found


# -- (a) routes ---------------------------------------------------------------------------------------


def documented_operations() -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in document()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def served_operations() -> set[tuple[str, str]]:
    app = create_app(MockEngine())
    served = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in route.methods:
            if method in {"OPTIONS", "HEAD"}:  # implicit on every route, per HTTP
                continue
            served.add((path, method))
    return served


def test_every_documented_operation_is_served() -> None:
    missing = documented_operations() - served_operations()
    assert not missing, f"documented but not served: {sorted(missing)}"


def test_no_undocumented_route_is_served() -> None:
    extra = {
        (path, method) for path, method in served_operations() - documented_operations() if path not in UNDOCUMENTED_OK
    }
    assert not extra, f"served but not documented: {sorted(extra)}"


def test_documented_operations_are_the_expected_ones() -> None:
    assert documented_operations() == {
        ("/v1/inference", "POST"),
        ("/v1/inference/{job_id}", "GET"),
        ("/v1/inference/{job_id}", "DELETE"),
        ("/v1/inference/{job_id}/stream", "GET"),
        ("/health", "GET"),
        ("/metrics", "GET"),
    }


# -- (b) request constraints ----------------------------------------------------------------------------


def test_inference_request_constraints_match() -> None:
    documented = component("InferenceRequest")
    enforced = worker_schemas(schemas.InferenceRequest)["InferenceRequest"]
    assert documented["additionalProperties"] is False
    assert enforced.get("additionalProperties") is False
    assert sorted(documented["required"]) == sorted(enforced["required"])
    assert documented["properties"].keys() == enforced["properties"].keys()
    for name, doc_schema in documented["properties"].items():
        assert constraints(doc_schema) == constraints(enforced["properties"][name]), name


def test_documented_default_max_tokens_is_the_workers() -> None:
    from workers.config import WorkerSettings

    description = component("InferenceRequest")["properties"]["max_tokens"]["description"]
    assert f"({WorkerSettings().default_max_tokens})" in description
    assert WorkerSettings().max_tokens_cap == component("InferenceRequest")["properties"]["max_tokens"]["maximum"]


# -- (c) response fields -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "struct,name",
    [
        (schemas.JobStatus, "JobStatus"),
        (schemas.Health, "Health"),
        (schemas.SubmitResponse, "SubmitResponse"),
        (Problem, "Problem"),
    ],
)
def test_response_fields_are_documented(struct: type, name: str) -> None:
    documented = component(name)
    fields = set(struct.__struct_fields__)  # type: ignore[attr-defined]
    assert fields <= documented["properties"].keys(), f"undocumented fields: {fields - documented['properties'].keys()}"
    always_sent = set(worker_schemas(struct)[struct.__name__].get("required", []))
    if name == "Problem":  # optional members are omitted, not null
        always_sent = {f for f in fields if f not in {"instance", "errors"}}
    assert set(documented["required"]) <= always_sent, (
        f"required but not always sent: {set(documented['required']) - always_sent}"
    )


def test_nested_response_fields_are_documented() -> None:
    job_error = component("JobStatus")["properties"]["error"]
    assert set(schemas.ErrorInfo.__struct_fields__) == job_error["properties"].keys()
    assert set(job_error["required"]) == set(schemas.ErrorInfo.__struct_fields__)
    queue = component("Health")["properties"]["queue"]
    assert set(schemas.QueueInfo.__struct_fields__) <= queue["properties"].keys()


def test_enums_match() -> None:
    status = component("JobStatus")["properties"]
    assert set(status["state"]["enum"]) == set(schemas.JobState.__args__)
    assert set(status["stop_reason"]["enum"]) - {None} == set(schemas.StopReasonField.__args__)
    end = component("SseEndEvent")["properties"]["data"]["contentSchema"]["properties"]["stop_reason"]
    assert set(end["enum"]) == set(schemas.StopReasonField.__args__)
    assert set(component("Health")["properties"]["status"]["enum"]) == {"ok", "unavailable"}


@pytest.mark.parametrize(
    "struct,event",
    [
        (schemas.StartedData, "SseStartedEvent"),
        (schemas.TokenData, "SseTokenEvent"),
        (schemas.EndData, "SseEndEvent"),
        (schemas.ErrorInfo, "SseErrorEvent"),
    ],
)
def test_event_payloads_match(struct: type, event: str) -> None:
    content = component(event)["properties"]["data"]["contentSchema"]
    fields = set(struct.__struct_fields__)  # type: ignore[attr-defined]
    assert fields == content["properties"].keys()
    assert set(content["required"]) == fields


# -- (d) upstream schemathesis -----------------------------------------------------------------------------------


def schemathesis_command() -> str:
    local = Path(sys.executable).parent / "schemathesis"
    if local.exists():
        return str(local)
    found = shutil.which("schemathesis")
    assert found, "the schemathesis CLI is not installed (it is a dependency of dualcall)"
    return found


@pytest.mark.slow
def test_schemathesis_finds_nothing(start_worker: Any, tmp_path: Path) -> None:
    worker = start_worker("mock")
    command = [
        schemathesis_command(),
        "run",
        str(openapi.DOCUMENT_PATH),
        "--url",
        worker.url,
        "-c",
        "all",
        "--max-examples",
        "20",
        "--phases=examples,coverage,fuzzing,stateful",
        "--request-timeout",
        "10",
        "--generation-deterministic",
        "--no-color",
        "--output-truncate",
        "false",
    ]
    env = dict(os.environ, NO_COLOR="1", SCHEMATHESIS_TELEMETRY="false")
    done = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"$ {' '.join(command)}\n{output}"
    # all four phases ran, with link-following in the stateful one
    assert "Stateful" in output
    assert re.search(r"API Links:\s+\d+ covered", output), output
