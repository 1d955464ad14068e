"""Security properties of the worker and the report: auth, job ids, caps, logs, hostile report content."""

from __future__ import annotations

import base64
import html.parser
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from helpers import events_of
from litestar.testing import TestClient
from workerproc import WorkerProcess

import workers.app as worker_app
from conformance.model import CheckResult, Diagnosis, Exchange, Report
from conformance.report.html import to_html
from workers.config import WorkerSettings
from workers.engines.mock import MockEngine
from workers.registry import new_job_id

pytestmark = pytest.mark.slow

TOKEN = "security-suite-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def auth_worker() -> Iterator[WorkerProcess]:
    with WorkerProcess("mock", "--auth-token", TOKEN) as worker:
        yield worker


# -- bearer auth ------------------------------------------------------------------------------------


def test_bearer_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every token check goes through hmac.compare_digest (no early-exit `==` on the secret)."""
    calls: list[tuple[bytes, bytes]] = []
    real = worker_app.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(worker_app.hmac, "compare_digest", spy)
    app = worker_app.create_app(MockEngine(), WorkerSettings(auth_token=TOKEN))
    with TestClient(app) as client:
        assert client.get("/v1/inference/x", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/inference/x", headers=AUTH).status_code == 404
    assert calls == [(b"wrong", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_every_method_on_every_job_route_needs_the_token(auth_worker: WorkerProcess) -> None:
    with httpx.Client(timeout=10) as client:
        job = client.post(auth_worker.url + "/v1/inference", json={"prompt": "x", "max_tokens": 2}, headers=AUTH)
        assert job.status_code == 202
        paths = ["/v1/inference", job.json()["status_url"], job.json()["sse_url"], "/v1/inference/unknown-job"]
        wrong = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}]
        checked = 0
        for path in paths:
            for method in ("GET", "HEAD", "OPTIONS", "POST", "DELETE", "PUT", "PATCH"):
                for headers in wrong:
                    response = client.request(method, auth_worker.url + path, headers=headers)
                    assert response.status_code == 401, (method, path, headers, response.status_code)
                    assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
                    assert response.headers["content-type"].startswith("application/problem+json"), (method, path)
                    if method != "HEAD":
                        assert response.json()["status"] == 401
                    checked += 1
        # with the token, the same requests get their ordinary answers (405 with Allow for unknown methods)
        allowed = client.request("PUT", auth_worker.url + paths[1], headers=AUTH)
        assert allowed.status_code == 405 and "GET" in allowed.headers["allow"]
        assert client.request("OPTIONS", auth_worker.url + paths[1], headers=AUTH).status_code == 204
        # the scheme is case-insensitive (RFC 9110)
        lower = client.get(auth_worker.url + paths[1], headers={"Authorization": f"bearer {TOKEN}"})
        assert lower.status_code == 200
        # a CORS preflight never carries credentials, so it is not asked for them
        preflight = client.options(
            auth_worker.url + "/v1/inference",
            headers={"Origin": "http://elsewhere.test", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code != 401
        # service endpoints stay open
        for path in ("/health", "/metrics", "/openapi.json"):
            assert client.get(auth_worker.url + path).status_code == 200, path
    assert checked == len(paths) * 7 * len(wrong)


# -- job ids ----------------------------------------------------------------------------------------


def _id_bits(job_id: str) -> int:
    raw = base64.urlsafe_b64decode(job_id + "=" * (-len(job_id) % 4))
    assert len(raw) == 16, job_id
    return int.from_bytes(raw, "big")


def test_job_ids_have_128_random_bits_and_do_not_predict_each_other(auth_worker: WorkerProcess) -> None:
    samples = 20_000
    ids = [new_job_id() for _ in range(samples)]
    assert len(set(ids)) == samples
    values = [_id_bits(job_id) for job_id in ids]
    # each of the 128 bit positions is set in about half of the ids (binomial sd 0.0035: 0.47..0.53 is > 8 sd)
    for bit in range(128):
        share = sum((value >> bit) & 1 for value in values) / samples
        assert 0.47 < share < 0.53, f"bit {bit} is set in {share:.3f} of the ids"
    # consecutive ids differ in ~64 bits (sd 5.7 per pair, 0.04 over the mean): no counter, no shared state
    distances = [bin(a ^ b).count("1") for a, b in itertools.pairwise(values)]
    assert 63 < sum(distances) / len(distances) < 65
    assert min(distances) > 20
    # no constant or repeating step between consecutive ids (what a counter or an LCG would show)
    steps = {(b - a) % 2**128 for a, b in itertools.pairwise(values)}
    assert len(steps) == samples - 1
    # ids the worker hands out over HTTP are the same kind
    with httpx.Client(timeout=10, headers=AUTH) as client:
        served = [
            client.post(auth_worker.url + "/v1/inference", json={"prompt": "id", "max_tokens": 1}).json()["job_id"]
            for _ in range(64)
        ]
    assert len(set(served)) == len(served)
    served_values = [_id_bits(job_id) for job_id in served]
    ones = sum(bin(value).count("1") for value in served_values) / (128 * len(served))
    assert 0.45 < ones < 0.55


# -- caps ---------------------------------------------------------------------------------------------


def test_body_size_and_max_tokens_caps_are_configurable() -> None:
    with (
        WorkerProcess("mock", "--max-body-bytes", "2000", "--max-tokens-cap", "7") as worker,
        httpx.Client(timeout=10) as client,
    ):
        url = worker.url + "/v1/inference"
        at_limit = json.dumps({"prompt": "x" * (2000 - 14)}).encode()
        assert len(at_limit) == 2000
        assert client.post(url, content=at_limit, headers={"Content-Type": "application/json"}).status_code == 202
        over = json.dumps({"prompt": "x" * (2001 - 14)}).encode()
        too_big = client.post(url, content=over, headers={"Content-Type": "application/json"})
        assert too_big.status_code == 413 and too_big.headers["content-type"].startswith("application/problem+json")
        job = client.post(url, json={"prompt": "cap", "max_tokens": 100}).json()
        events = events_of(client.get(worker.url + job["sse_url"]).content)
        end = json.loads(events[-2].data)
        assert end == {"tokens_out": 7, "stop_reason": "max_tokens"}
        assert client.get(worker.url + "/health").json()["max_tokens_cap"] == 7


@pytest.mark.parametrize(
    "flags",
    [("--max-body-bytes", "0"), ("--max-body-bytes", "-5"), ("--max-tokens-cap", "0"), ("--shutdown-timeout-s", "0")],
)
def test_bad_cap_flags_are_one_line_errors(flags: tuple[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers", "mock", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert flags[0] in result.stderr or "must be" in result.stderr


# -- logs ---------------------------------------------------------------------------------------------


def test_no_prompt_or_token_text_in_logs_at_info() -> None:
    secret = "SECRET-PROMPT-7f3a9c"
    flags = ("--access-log", "--fail-after", "3", "--fail-prompt", "FAILME", "--token-delay-ms", "0")
    with WorkerProcess("mock", *flags) as worker, httpx.Client(timeout=10) as client:
        url = worker.url + "/v1/inference"
        streamed = ""
        for prompt in (secret, f"FAILME {secret}"):
            job = client.post(url, json={"prompt": prompt, "max_tokens": 300, "temperature": 1.5, "seed": 3}).json()
            events = events_of(client.get(worker.url + job["sse_url"]).content)
            streamed += "".join(json.loads(e.data)["text"] for e in events if e.event == "token")
        client.post(url, json={"prompt": secret, "stop": [secret] * 9})  # 422: echoes nothing of the prompt in logs
        client.post(url, content=("[" * 5000 + secret).encode(), headers={"Content-Type": "application/json"})
        client.post(url, content=f'{{"prompt":"{secret}\xff"}}'.encode("latin-1"))
    logs = worker.stdout + worker.stderr
    assert "GET /v1/inference/" in logs, "the access log is on: INFO lines were written"
    assert secret not in logs
    distinctive = [token for token in ("orchestrator", "日本語", "漢字", "🚀", "back\\slash") if token in streamed]
    assert distinctive, "the streams should have carried some distinctive mock tokens"
    for token in distinctive:
        assert token not in logs, token


# -- the HTML report against hostile worker output ------------------------------------------------------


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


ATTACKS = (
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'><svg onload=alert(1)>",
    "javascript:alert(1)",
    "</style><script>x</script>",
    "<iframe src=//evil.test>",
    '<meta http-equiv="refresh" content="0;url=//evil.test">',
    "<!--",
    "]]><![CDATA[",
    "\x00\x1b[2J\u202e",
)


def _hostile_report() -> Report:
    attack = " ".join(ATTACKS)
    exchange = Exchange(
        method="GET" + attack,
        url="javascript:alert(1)//" + attack,
        request_headers={attack: attack},
        request_body=attack,
        status=500,
        response_headers={"content-type": attack, attack: attack},
        body_excerpt=attack,
        error=attack,
    )
    result = CheckResult(
        id="DC-X-" + attack,
        rule=attack,
        level="MUST",
        title=attack,
        outcome="failed",
        message=attack,
        details=[attack, attack],
        exchanges=[exchange],
    )
    return Report(
        target="http://worker.test/" + attack,
        contract_version=attack,
        threshold="must",
        started_at=attack,
        results=[result, CheckResult("DC-Y", attack, "SHOULD", attack, "warning", attack, exchanges=[exchange])],
        diagnoses=[Diagnosis(name=attack, summary=attack, observations=[attack], fixes=[attack])],
        worker={attack: attack, "server": attack},
        suite_version=attack,
    )


def test_html_report_keeps_its_csp_and_escapes_hostile_worker_output() -> None:
    page = to_html(_hostile_report())
    parser = _Tags()
    parser.feed(page)
    tags = [tag for tag, _ in parser.tags]
    for forbidden in ("script", "iframe", "img", "svg", "object", "embed", "link", "base", "form"):
        assert forbidden not in tags, forbidden
    metas = [attrs for tag, attrs in parser.tags if tag == "meta"]
    csp = [attrs for attrs in metas if (attrs.get("http-equiv") or "").lower() == "content-security-policy"]
    assert len(csp) == 1 and "default-src 'none'" in (csp[0].get("content") or "")
    assert "script-src" not in (csp[0].get("content") or "")
    assert not any((attrs.get("http-equiv") or "").lower() == "refresh" for attrs in metas)
    # the CSP comes before anything the worker controls
    assert page.index("Content-Security-Policy") < page.index("worker.test")
    for tag, attrs in parser.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert not (value or "").strip().lower().startswith("javascript:"), (tag, name, value)
    assert "\x00" not in page and "\x1b" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
