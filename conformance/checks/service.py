"""DC-5: service endpoints, problem details, auth, version."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import yaml

from conformance.checks.problems import problem_defects
from conformance.context import Context
from conformance.contract import contract_version
from conformance.registry import check
from conformance.verdicts import CheckFailed, CheckUnverified

HEADER = "dualcall-contract-version"
_VERSION = re.compile(r"^\d+\.\d+\.\d+")


@check(
    "DC-SVC-001",
    rule="DC-5.1",
    level="MUST",
    title="/health answers 200 {status ok, engine, model, contract_version}",
    area="service",
)
def health(ctx: Context) -> str:
    response = ctx.probe.request("GET", ctx.base_url + "/health", auth=False)
    if response.status_code != 200:
        raise CheckFailed(f"/health answered {response.status_code}, expected 200 while the engine serves")
    body = ctx.health()
    if body is None:
        raise CheckFailed("/health did not answer a JSON object")
    missing = [key for key in ("status", "engine", "model", "contract_version") if key not in body]
    if missing:
        raise CheckFailed(f"/health lacks {', '.join(missing)}")
    if body["status"] != "ok":
        raise CheckFailed(f"/health answered 200 with status {body['status']!r}, expected 'ok'")
    return f"engine {body['engine']}, model {body['model']}"


@check(
    "DC-SVC-002", rule="DC-5.2", level="MUST", title="the worker serves its OpenAPI document and docs", area="service"
)
def openapi_served(ctx: Context) -> str:
    """Both /openapi.json and /openapi.yaml (DC-5.2 names both), each an OpenAPI 3.x document, and /docs."""
    document = _openapi_document(ctx, "/openapi.json", json.loads)
    _openapi_document(ctx, "/openapi.yaml", yaml.safe_load)
    docs = ctx.probe.request("GET", ctx.base_url + "/docs", auth=False)
    if docs.status_code != 200 or "html" not in docs.headers.get("content-type", ""):
        raise CheckFailed(
            f"/docs answered {docs.status_code} {docs.headers.get('content-type', '')}, expected an HTML page"
        )
    return f"OpenAPI {document['openapi']} document as JSON and YAML, and /docs"


def _openapi_document(ctx: Context, path: str, parse: Callable[[str], Any]) -> dict[str, Any]:
    response = ctx.probe.request("GET", ctx.base_url + path, auth=False)
    if response.status_code != 200:
        raise CheckFailed(f"{path} answered {response.status_code}, expected the OpenAPI document")
    try:
        document = parse(response.text)
    except (ValueError, yaml.YAMLError):
        raise CheckFailed(f"{path} does not parse") from None
    paths = document.get("paths", {}) if isinstance(document, dict) else {}
    if (
        not isinstance(document, dict)
        or "/v1/inference" not in paths
        or not str(document.get("openapi")).startswith("3.")
    ):
        raise CheckFailed(f"{path} is not an OpenAPI 3.x document describing /v1/inference")
    return dict(document)


@check("DC-SVC-003", rule="DC-5.2", level="SHOULD", title="Prometheus metrics at /metrics", area="service")
def metrics(ctx: Context) -> str:
    response = ctx.probe.request("GET", ctx.base_url + "/metrics", auth=False)
    if response.status_code != 200:
        raise CheckFailed(f"/metrics answered {response.status_code}")
    if not any(line.startswith("# TYPE ") for line in response.text.splitlines()):
        raise CheckFailed("/metrics is not Prometheus text exposition (no # TYPE lines)")
    return "Prometheus text exposition"


@check(
    "DC-SVC-004",
    rule="DC-5.3",
    level="MUST",
    title="every error answer seen during the run is problem+json without a traceback",
    area="service",
    sweep=True,
)
def errors_are_problems(ctx: Context) -> str:
    """Sweeps every 4xx/5xx the suite received so far, whatever check provoked it."""
    errors = [
        exchange for exchange in ctx.probe.all_exchanges if exchange.status is not None and exchange.status >= 400
    ]
    if not errors:
        raise CheckUnverified("no error response was seen in this run", "run the whole catalogue, not a selection")
    if not any(exchange.status == 202 and exchange.method == "POST" for exchange in ctx.probe.all_exchanges):
        raise CheckUnverified(
            "the worker accepted no job in this run, so its error answers cannot be told from a server that "
            "serves nothing",
            "a dual-call submit (see DC-SUBMIT-001)",
        )
    bad = []
    for exchange in errors:
        defects = problem_defects(exchange.status or 0, exchange.response_headers, exchange.body_excerpt)
        if exchange.body_truncated and defects == ["the body is not JSON"]:
            continue
        if defects:
            bad.append((exchange, defects))
    if bad:
        ctx.probe.exchanges.extend(exchange for exchange, _ in bad[:3])
        lines = [f"{e.method} {e.url} -> {e.status}: {'; '.join(d)}" for e, d in bad[:8]]
        raise CheckFailed(f"{len(bad)} of {len(errors)} error responses are not proper problem+json", *lines)
    return f"{len(errors)} error responses, all problem+json"


@check(
    "DC-SVC-005",
    rule="DC-5.4",
    level="MUST",
    title="with auth on, job routes need the bearer token; /health does not",
    area="service",
)
def auth(ctx: Context) -> str:
    unauthenticated = ctx.probe.request("POST", ctx.probe.submit_url, json_body=ctx.body(max_tokens=2), auth=False)
    if ctx.options.token is None:
        if unauthenticated.status_code == 401:
            raise CheckUnverified(
                "the worker requires a token", "pass --token or set $DUALCALL_TOKEN to run the suite against it"
            )
        raise CheckUnverified(
            "bearer auth is off on this worker, so its 401 answers cannot be observed",
            "start the worker with auth on and pass its token with --token (or $DUALCALL_TOKEN)",
        )
    job = ctx.submit(ctx.body(max_tokens=2))
    probes = [
        ("POST", ctx.probe.submit_url, unauthenticated),
        ("GET", job.sse_url, ctx.probe.request("GET", job.sse_url, auth=False)),
        ("GET", job.status_url, ctx.probe.request("GET", job.status_url, auth=False)),
        ("DELETE", job.status_url, ctx.probe.request("DELETE", job.status_url, auth=False)),
        (
            "GET",
            job.status_url,
            ctx.probe.request("GET", job.status_url, auth=False, headers={"Authorization": "Bearer wrong-token"}),
        ),
    ]
    for method, url, response in probes:
        if response.status_code != 401:
            raise CheckFailed(f"{method} {url} without a valid token answered {response.status_code}, expected 401")
        if not response.headers.get("www-authenticate", "").lower().startswith("bearer"):
            raise CheckFailed(f"{method} {url} answered 401 without WWW-Authenticate: Bearer")
        defects = problem_defects(401, response.headers, response.text)
        if defects:
            raise CheckFailed(f"{method} {url} answered a 401 that is not problem+json: {'; '.join(defects)}")
    health_response = ctx.probe.request("GET", ctx.base_url + "/health", auth=False)
    if health_response.status_code != 200:
        raise CheckFailed(f"/health without a token answered {health_response.status_code}; it must not need auth")
    return "401 + WWW-Authenticate on every job route; /health open"


@check(
    "DC-SVC-006",
    rule="DC-5.5",
    level="MUST",
    title="the contract version is reported in a header and in /health",
    area="service",
    sweep=True,
)
def version(ctx: Context) -> str:
    response = ctx.probe.request("GET", ctx.base_url + "/health", auth=False)
    header = response.headers.get(HEADER)
    if not header or not _VERSION.match(header):
        raise CheckFailed(f"/health has no valid {HEADER} header (got {header!r})")
    body = ctx.health() or {}
    if body.get("contract_version") != header:
        raise CheckFailed(f"header says {header!r} but /health contract_version is {body.get('contract_version')!r}")
    missing = [
        f"{e.method} {e.url} -> {e.status}"
        for e in ctx.probe.all_exchanges
        if e.status is not None and HEADER not in {k.lower() for k in e.response_headers}
    ]
    if missing:
        raise CheckFailed(f"{len(missing)} responses lack the {HEADER} header", *missing[:5])
    if header.split(".")[0] != contract_version().split(".")[0]:
        raise CheckFailed(f"the worker implements contract {header}; this suite checks {contract_version()}")
    return f"contract {header}"
