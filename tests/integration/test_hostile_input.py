"""Hostile input against a real mock worker on loopback: never a 5xx, never a traceback.

Every request goes over a bare socket (`rawhttp`), so the bytes on the wire are exactly the test's:
NUL and non-UTF-8 bytes in paths and headers, chunked uploads, duplicate keys, 100 000-deep JSON.
The corpus is deterministic (seeded mutations). The module's worker fixture counts every input and,
at its teardown, prints how many were tried and how many 5xx came back (docs/reliability.md quotes it);
the count covers whichever of the module's tests ran, in any order.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import rawhttp
from helpers import events_of
from rawhttp import RawResponse, build
from workerproc import WorkerProcess

from workers.engines.base import GenerationRequest
from workers.engines.mock import MockEngine

pytestmark = pytest.mark.slow

TOKEN = b"hostile-suite-token"
AUTH = (b"Authorization", b"Bearer " + TOKEN)
JSON = (b"Content-Type", b"application/json")
SUBMIT = b"/v1/inference"
#: small enough that "just over the limit" uploads stay cheap
MAX_BODY = 256 * 1024
#: what uvicorn itself answers to bytes that are not HTTP (before the app sees anything)
PROTOCOL_REFUSAL = b"Invalid HTTP request received."


@dataclass
class Tally:
    tried: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    protocol_refusals: int = 0

    def summary(self) -> str:
        return (
            f"hostile inputs tried: {self.tried}; 5xx: {len(self.server_errors)}; "
            f"protocol-level refusals by uvicorn: {self.protocol_refusals}; "
            f"statuses: {dict(sorted(self.by_status.items()))}"
        )


@dataclass
class Hostile:
    """The worker under attack and the tally of everything sent to it."""

    worker: WorkerProcess
    tally: Tally = field(default_factory=Tally)

    def send(self, request: bytes, label: str) -> RawResponse:
        """One hostile exchange: counted, and held to "4xx problem+json (or a protocol refusal), never 5xx"."""
        self.tally.tried += 1
        response = rawhttp.exchange(self.worker.url, request)
        self.tally.by_status[response.status] += 1
        if response.status >= 500:
            self.tally.server_errors.append(f"{label}: {response.status} {response.body[:200]!r}")
        assert response.status < 500, f"{label}: {response.status} {response.body[:300]!r}"
        if response.status >= 400:
            if response.body.startswith(PROTOCOL_REFUSAL):
                self.tally.protocol_refusals += 1
            else:
                assert response.media_type == "application/problem+json", f"{label}: {response.headers}"
                problem = response.json()
                assert problem["status"] == response.status and problem["type"] and problem["detail"], label
                assert "Traceback" not in response.body.decode("utf-8", "replace"), label
        return response

    def post(self, body: bytes, label: str, *, content_type: bytes | None = b"application/json") -> int:
        headers = [AUTH] + ([(b"Content-Type", content_type)] if content_type is not None else [])
        return self.send(build(b"POST", SUBMIT, headers, body), label).status

    def valid_job(self, **fields: object) -> str:
        body = json.dumps({"prompt": "hostile suite", "max_tokens": 4, **fields}).encode()
        response = self.send(build(b"POST", SUBMIT, [AUTH, JSON], body), "valid job")
        assert response.status == 202, response.body
        job_id: str = response.json()["job_id"]
        return job_id


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    """One worker for the module; whichever tests ran, its teardown prints their tally (`pytest -s`)."""
    with WorkerProcess(
        "mock", "--auth-token", TOKEN.decode(), "--max-body-bytes", str(MAX_BODY), "--token-delay-ms", "0"
    ) as proc:
        attack = Hostile(proc)
        yield attack
    print(f"\n{attack.tally.summary()}")
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]


# -- deep and huge JSON -----------------------------------------------------------------------------


DEPTHS = (31, 32, 33, 500, 999, 1000, 1001, 5000, 100_000)


@pytest.mark.parametrize("depth", DEPTHS)
def test_deep_json_is_refused_cleanly(hostile: Hostile, depth: int) -> None:
    shapes = {
        "open brackets": b"[" * depth,
        "balanced arrays": b"[" * depth + b"]" * depth,
        "balanced objects": b'{"a":' * depth + b"1" + b"}" * depth,
        "mixed": b'[{"a":' * (depth // 2) + b"1" + b"}]" * (depth // 2),
        "in prompt": b'{"prompt":' + b"[" * depth + b"]" * depth + b"}",
        "in stop": b'{"prompt":"x","stop":' + b"[" * depth + b"]" * depth + b"}",
        "in unknown field": b'{"prompt":"x","extra":' + b"[" * depth + b"]" * depth + b"}",
        "job_id field": b'{"prompt":"x","job_id":' + b"[" * depth + b"]" * depth + b"}",
    }
    for name, body in shapes.items():
        status = hostile.post(body, f"depth {depth} {name}")
        assert status in (400, 413, 422), (name, status)
    if depth >= 1000:
        response = hostile.send(build(b"POST", SUBMIT, [AUTH, JSON], b"[" * depth), "deep")
        assert response.json()["type"].endswith("json-too-deep")


def test_huge_and_boundary_values(hostile: Hostile) -> None:
    prompt_limit = 65536
    cases: dict[str, tuple[bytes, set[int]]] = {
        "prompt at its limit": (json.dumps({"prompt": "p" * prompt_limit, "max_tokens": 1}).encode(), {202}),
        "prompt one over": (json.dumps({"prompt": "p" * (prompt_limit + 1)}).encode(), {422}),
        "prompt of 4-byte chars at its limit": (
            json.dumps({"prompt": "🚀" * prompt_limit, "max_tokens": 1}, ensure_ascii=False).encode(),
            {202, 413},
        ),
        "empty prompt": (b'{"prompt":""}', {422}),
        "stop at its limits": (json.dumps({"prompt": "x", "max_tokens": 1, "stop": ["s" * 256] * 4}).encode(), {202}),
        "stop string one over": (json.dumps({"prompt": "x", "stop": ["s" * 257]}).encode(), {422}),
        "five stop strings": (json.dumps({"prompt": "x", "stop": ["a"] * 5}).encode(), {422}),
        "empty stop string": (b'{"prompt":"x","stop":[""]}', {422}),
        "200k-element stop": (b'{"prompt":"x","stop":[' + b",".join([b'"a"'] * 20_000) + b"]}", {422}),
        "long top-level array": (b"[" + b",".join([b"1"] * 100_000) + b"]", {400, 413, 422}),
        "body one byte over the limit": (b'{"prompt":"' + b"x" * (MAX_BODY - 12) + b'"}', {413}),
        "body at the limit": (b'{"prompt":"' + b"x" * (MAX_BODY - 13) + b'"}', {422}),
        "max_tokens at the limit": (b'{"prompt":"x","max_tokens":4096}', {202}),
        "max_tokens one over": (b'{"prompt":"x","max_tokens":4097}', {422}),
        "max_tokens zero": (b'{"prompt":"x","max_tokens":0}', {422}),
        "max_tokens 5000 digits": (b'{"prompt":"x","max_tokens":' + b"9" * 5000 + b"}", {400, 422}),
        "max_tokens 2**64": (b'{"prompt":"x","max_tokens":18446744073709551616}', {422}),
        "max_tokens -2**63-1": (b'{"prompt":"x","max_tokens":-9223372036854775809}', {422}),
        "max_tokens 1e308": (b'{"prompt":"x","max_tokens":1e308}', {422}),
        "max_tokens 1e309": (b'{"prompt":"x","max_tokens":1e309}', {400, 422}),
        "max_tokens 4.0": (b'{"prompt":"x","max_tokens":4.0}', {202}),
        "max_tokens 4.5": (b'{"prompt":"x","max_tokens":4.5}', {422}),
        "max_tokens string": (b'{"prompt":"x","max_tokens":"4"}', {422}),
        "temperature 1e-400": (b'{"prompt":"x","max_tokens":1,"temperature":1e-400}', {202}),
        "temperature NaN": (b'{"prompt":"x","temperature":NaN}', {400}),
        "temperature Infinity": (b'{"prompt":"x","temperature":Infinity}', {400}),
        "seed 2**63": (b'{"prompt":"x","seed":9223372036854775808}', {422}),
        "top_k -1": (b'{"prompt":"x","top_k":-1}', {422}),
        "top_p 0": (b'{"prompt":"x","top_p":0}', {422}),
        "number with 100k digits": (b'{"prompt":"x","temperature":0.' + b"1" * 100_000 + b"}", {202, 400, 422}),
    }
    for name, (body, expected) in cases.items():
        status = hostile.post(body, name)
        assert status in expected, (name, status)


def test_duplicate_keys_and_odd_documents(hostile: Hostile) -> None:
    cases: dict[str, tuple[bytes, set[int]]] = {
        "duplicate prompt": (b'{"prompt":"a","prompt":"b","max_tokens":1}', {202, 400, 422}),
        "duplicate max_tokens, mixed types": (b'{"prompt":"a","max_tokens":1,"max_tokens":"x"}', {400, 422}),
        "duplicate key 1000 times": (b'{"prompt":"a",' + b'"max_tokens":1,' * 1000 + b'"seed":1}', {202, 400, 422}),
        "client job_id": (b'{"prompt":"a","job_id":"mine"}', {422}),
        "empty body": (b"", {400}),
        "whitespace only": (b"   \n\t ", {400}),
        "null": (b"null", {400, 422}),
        "true": (b"true", {400, 422}),
        "string": (b'"prompt"', {400, 422}),
        "array": (b"[]", {400, 422}),
        "empty object": (b"{}", {422}),
        "trailing garbage": (b'{"prompt":"a"}xyz', {400}),
        "two documents": (b'{"prompt":"a"}{"prompt":"b"}', {400}),
        "BOM prefix": (b'\xef\xbb\xbf{"prompt":"a","max_tokens":1}', {202, 400}),
        "UTF-16 body": ('{"prompt":"a"}'.encode("utf-16"), {400}),
        "raw NUL in string": (b'{"prompt":"a\x00b"}', {400}),
        "raw NUL between tokens": (b'{"prompt":\x00"a"}', {400}),
        "escaped NUL": (b'{"prompt":"a\\u0000b","max_tokens":1}', {202}),
        "invalid UTF-8 in string": (b'{"prompt":"\xff\xfe"}', {400}),
        "invalid UTF-8 in key": (b'{"\xff":"a"}', {400}),
        "overlong UTF-8 slash": (b'{"prompt":"\xc0\xaf"}', {400}),
        "UTF-8 surrogate bytes": (b'{"prompt":"\xed\xa0\x80"}', {400}),
        "lone escaped surrogate": (b'{"prompt":"\\ud800"}', {202, 400}),
        "truncated escape": (b'{"prompt":"\\u12"}', {400}),
        "unterminated string": (b'{"prompt":"abc', {400}),
        "control character in string": (b'{"prompt":"a\x01b"}', {400}),
    }
    for name, (body, expected) in cases.items():
        status = hostile.post(body, name)
        assert status in expected, (name, status)


# -- content types and framing ----------------------------------------------------------------------


def test_wrong_missing_and_odd_content_types(hostile: Hostile) -> None:
    body = b'{"prompt":"a","max_tokens":1}'
    multipart = (
        b'--XYZ\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na\r\n--XYZ--\r\n',
        b"multipart/form-data; boundary=XYZ",
    )
    cases: dict[str, tuple[bytes, bytes | None, set[int]]] = {
        "charset latin-1": (body, b"application/json; charset=latin-1", {202, 415}),
        "charset utf-16": (body, b"application/json; charset=utf-16", {202, 415}),
        "latin-1 bytes with latin-1 charset": (
            '{"prompt":"café"}'.encode("latin-1"),
            b"application/json; charset=latin-1",
            {400, 415},
        ),
        "upper case": (body, b"APPLICATION/JSON", {202, 415}),
        "json suffix type": (body, b"application/problem+json", {415}),
        "multipart": (multipart[0], multipart[1], {415}),
        "form": (b"prompt=a", b"application/x-www-form-urlencoded", {415}),
        "text/plain": (body, b"text/plain", {415}),
        "missing": (body, None, {415}),
        "empty": (body, b"", {415}),
        "parameters only": (body, b";;;", {415}),
        "garbage parameters": (body, b"application/json;;;=;=x", {202, 415}),
        "very long": (body, b"application/json; x=" + b"a" * 8000, {202, 415, 431}),
        "invalid UTF-8": (body, b"application/\xffjson", {400, 415}),
        "NUL": (body, b"application/json\x00", {400, 415}),
    }
    for name, (payload, content_type, expected) in cases.items():
        status = hostile.post(payload, f"content type {name}", content_type=content_type)
        assert status in expected, (name, status)


def test_oversized_uploads(hostile: Hostile) -> None:
    big = b'{"prompt":"' + b"x" * (2 * MAX_BODY) + b'"}'
    for label, request in {
        "chunked over the limit": build(b"POST", SUBMIT, [AUTH, JSON], big, chunked=True),
        "chunked far over the limit": build(b"POST", SUBMIT, [AUTH, JSON], big * 8, chunked=True),
        "content-length over the limit": build(b"POST", SUBMIT, [AUTH, JSON], big),
    }.items():
        assert hostile.send(request, label).status == 413, label
    small = build(b"POST", SUBMIT, [AUTH, JSON], b'{"prompt":"a","max_tokens":1}', chunked=True)
    assert hostile.send(small, "chunked, small").status == 202
    head = b"POST /v1/inference HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer " + TOKEN
    chunked = b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    for label, raw in {
        "negative content-length": head + b"\r\nContent-Type: application/json\r\nContent-Length: -1\r\n\r\n{}",
        "non-numeric content-length": head + b"\r\nContent-Type: application/json\r\nContent-Length: ab\r\n\r\n{}",
        "two content-lengths": head + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3"
        b"\r\n\r\n{}",
        "bad chunk size": head + chunked + b"zz\r\n{}\r\n0\r\n\r\n",
    }.items():
        assert 400 <= hostile.send(raw, label).status < 500, label


# -- paths, headers, methods ------------------------------------------------------------------------


def test_job_ids_overlong_and_percent_encoded(hostile: Hostile) -> None:
    real = hostile.valid_job().encode()
    ids = [
        b"a" * 22,
        b"a" * 4000,
        b"a" * 100_000,
        b"a\x00b",
        b"a b",
        b"%2F",
        b"%2F..%2F..%2Fhealth",
        b"..",
        b"%2e%2e",
        b"%2e%2e%2f%2e%2e",
        b"%00",
        b"a%00b",
        b"%ff%fe",
        b"\xff\xfe",
        b"%C0%AF",
        real + b"%00",
        real + b"%2F",
        real.upper(),
        real[:-1],
        b"%25",
        b"%",
        b"%zz",
        b"%E2%80%AE" + real,
        b"~" + real,
        b"'%20OR%201=1--",
        b"%0d%0aSet-Cookie:x=1",
    ]
    for job_id in ids:
        for method, suffix in ((b"GET", b""), (b"GET", b"/stream"), (b"DELETE", b"")):
            label = f"{method.decode()} job id {job_id[:40]!r}{suffix.decode()}"
            response = hostile.send(build(method, SUBMIT + b"/" + job_id + suffix, [AUTH]), label)
            # `<id>%2F` decodes to `<id>/`, and the router ignores a trailing slash: the same job
            expected = (200, 202, 204, 404) if job_id == real + b"%2F" else (400, 404, 405)
            assert response.status in expected, (label, response.status)
            assert "set-cookie" not in response.headers, label


def test_headers_with_nul_and_invalid_bytes(hostile: Hostile) -> None:
    job = hostile.valid_job().encode()
    cases = {
        "NUL in a header value": [(b"X-Test", b"a\x00b")],
        "0xff bytes in a header value": [(b"X-Test", b"\xff\xfe")],
        "invalid UTF-8 bearer token": [(b"Authorization", b"Bearer \xff\xfe")],
        "NUL bearer token": [(b"Authorization", b"Bearer " + TOKEN + b"\x00")],
        "empty bearer token": [(b"Authorization", b"Bearer ")],
        "basic auth": [(b"Authorization", b"Basic dXNlcjpwYXNz")],
        "8 KiB bearer token": [(b"Authorization", b"Bearer " + b"t" * 8192)],
        "token without scheme": [(b"Authorization", TOKEN)],
        "two authorization headers": [AUTH, (b"Authorization", b"Bearer wrong")],
        "space in header name": [(b"X Bad", b"1")],
        "200 headers": [(b"X-H%d" % i, b"v") for i in range(200)],
    }
    for name, headers in cases.items():
        with_auth = headers if any(h[0] == b"Authorization" for h in headers) else [AUTH, *headers]
        hostile.send(build(b"GET", SUBMIT + b"/" + job, with_auth), f"header {name}")
        hostile.send(build(b"GET", b"/health", headers), f"health, header {name}")


def test_unknown_methods_answer_405_with_allow(hostile: Hostile) -> None:
    job = hostile.valid_job().encode()
    routes = {
        SUBMIT: {"POST"},
        SUBMIT + b"/" + job: {"GET", "DELETE"},
        SUBMIT + b"/" + job + b"/stream": {"GET"},
        b"/health": {"GET"},
    }
    for path, allowed in routes.items():
        for method in (b"PUT", b"PATCH", b"TRACE", b"FOO", b"PROPFIND", b"CONNECT-X"):
            response = hostile.send(build(method, path, [AUTH]), f"{method.decode()} {path.decode()}")
            assert response.status == 405, (method, path, response.status)
            allow = {item.strip() for item in response.header("allow").split(",")}
            assert allowed <= allow, (method, path, allow)


def test_last_event_id_garbage(hostile: Hostile) -> None:
    job = hostile.valid_job().encode()
    stream = SUBMIT + b"/" + job + b"/stream"
    values = [
        b"abc",
        b"-1",
        b"1.5",
        b"0x10",
        b" 1",
        b"\xd9\xa1\xd9\xa2",  # Arabic-Indic digits: str.isdigit() says yes
        b"\xff",
        b"1\x00",
        b"9" * 5000,
        b"9" * 20,
        b"18446744073709551616",
        b"",
    ]
    for value in values:
        response = hostile.send(
            build(b"GET", stream, [AUTH, (b"Last-Event-ID", value)]), f"Last-Event-ID {value[:20]!r}"
        )
        assert response.status in (200, 204, 400), (value[:20], response.status)


# -- SSE framing cannot be injected -----------------------------------------------------------------


INJECTIONS = (
    "\n\ndata: [DONE]\n\n",
    "\r\n\r\nevent: end\r\ndata: {}\r\n\r\n",
    "\rid: 999\revent: error\r",
    "data: [DONE]",
    ": comment\n\n",
    "\u2028\u2029\u0085",
    "\x00",
    "id: 7",
    "event: end",
)


def _expected_text(request: GenerationRequest) -> str:
    async def collect() -> str:
        return "".join([chunk.text async for chunk in MockEngine().generate(request)])

    return asyncio.run(collect())


@pytest.mark.parametrize("injection", INJECTIONS, ids=repr)
def test_stop_strings_and_prompts_cannot_inject_sse_framing(hostile: Hostile, injection: str) -> None:
    """By construction (one line of JSON per data field), the stream parses to exactly the expected events."""
    # the mock's vocabulary itself holds "\n\n", "data: [DONE]", "event: end" and "id: 7": the stop
    # strings cut the text somewhere inside them, the prompt changes every token
    bodies = [
        {"prompt": injection, "max_tokens": 48, "temperature": 0},
        {"prompt": "x" + injection, "max_tokens": 48, "temperature": 0, "stop": [injection]},
        {"prompt": "y", "max_tokens": 48, "temperature": 0, "stop": ["data: [DONE]", "\n\n", injection, "event"]},
    ]
    with httpx.Client(timeout=10.0, headers={"Authorization": "Bearer " + TOKEN.decode()}) as client:
        for body in bodies:
            hostile.tally.tried += 1
            submitted = client.post(hostile.worker.url + "/v1/inference", json=body)
            assert submitted.status_code == 202, submitted.text
            raw = client.get(hostile.worker.url + submitted.json()["sse_url"]).content
            events = events_of(raw)
            kinds = [event.event for event in events]
            assert kinds[0] == "started" and kinds[-2] == "end" and events[-1].data == "[DONE]", kinds
            tokens = [json.loads(event.data) for event in events[1:-2]]
            assert kinds[1:-2] == ["token"] * len(tokens)
            assert [token["index"] for token in tokens] == list(range(len(tokens)))
            assert [event.id for event in events[:-1]] == [str(n) for n in range(1, len(events))]
            request = GenerationRequest(
                prompt=str(body["prompt"]),
                max_tokens=48,
                temperature=0,
                stop=tuple(body.get("stop", ())),  # type: ignore[arg-type]
            )
            assert "".join(token["text"] for token in tokens) == _expected_text(request)
            for line in raw.split(b"\n"):
                assert line == b"" or line.startswith((b"id: ", b"event: ", b"data: ")), line


# -- seeded random and mutated bodies ---------------------------------------------------------------


def test_random_and_mutated_bodies(hostile: Hostile) -> None:
    rng = random.Random(20261127)
    seed_body = b'{"prompt":"mutate me","max_tokens":2,"temperature":0.5,"top_p":0.9,"stop":["x","y"]}'
    specials = [b"[", b"{", b'"', b"\\", b"\x00", b"\xff", b"]", b"}", b",", b":", b"1e999", b"\\u0000", b"\xf0\x9f"]
    for _ in range(150):
        hostile.post(rng.randbytes(rng.randrange(1, 512)), "random bytes")
    for _ in range(350):
        body = bytearray(seed_body)
        for _ in range(rng.randrange(1, 6)):
            position = rng.randrange(len(body) + 1)
            action = rng.randrange(4)
            if action == 0 and body:
                del body[min(position, len(body) - 1)]
            elif action == 1:
                body[position:position] = rng.choice(specials) * rng.choice((1, 1, 2, 40, 2000))
            elif action == 2 and body:
                body[min(position, len(body) - 1)] = rng.randrange(256)
            else:
                body = body[:position]
        hostile.post(bytes(body), f"mutation {bytes(body[:60])!r}")


def test_worker_still_serves_after_the_corpus(hostile: Hostile) -> None:
    with httpx.Client(timeout=10.0, headers={"Authorization": "Bearer " + TOKEN.decode()}) as client:
        assert client.get(hostile.worker.url + "/health").status_code == 200
        submitted = client.post(hostile.worker.url + "/v1/inference", json={"prompt": "after", "max_tokens": 3})
        events = events_of(client.get(hostile.worker.url + submitted.json()["sse_url"]).content)
        assert [event.event for event in events][-2] == "end"
