"""The arena answers CORS for its own origins (and those it is given), so a browser caller's grade is its own.

A page served from one listener reads the stream on the other (``absolute-sse-url``); a page on
another origin is let in only with ``--cors-origin``. A preflight is answered, recorded, and
never graded as one of the caller's requests.
"""

from __future__ import annotations

import httpx

from callers.toy import ToyCaller
from conformance.callers.arena import ArenaServer
from conformance.callers.drive import CallerTarget
from conformance.callers.grade import build_report
from conformance.callers.record import CallerOutcome
from conformance.callers.scenarios import SCENARIO_BY_NAME


def submit(run_submit_url: str, origin: str | None) -> httpx.Response:
    headers = {"Origin": origin} if origin else {}
    return httpx.post(run_submit_url, json={"prompt": "hi"}, headers=headers, timeout=10)


def test_the_stream_on_the_second_listener_answers_cors_for_the_primary_origin(arena: ArenaServer) -> None:
    run = arena.arena.new_run(SCENARIO_BY_NAME["absolute-sse-url"])
    page_origin = arena.arena.base_url  # a page served from the primary listener
    sse_url = submit(run.submit_url, page_origin).json()["sse_url"]
    assert f":{arena.arena.second_port}/" in sse_url
    preflight = httpx.options(
        sse_url,
        headers={
            "Origin": page_origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == page_origin
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "last-event-id"
    stream = httpx.get(sse_url, headers={"Origin": page_origin}, timeout=10)
    assert stream.status_code == 200 and b"event: end" in stream.content
    assert stream.headers["access-control-allow-origin"] == page_origin
    assert "Retry-After" in stream.headers["access-control-expose-headers"]
    arena.settle(run)
    kinds = [hit.kind for hit in run.hits]
    assert kinds == ["submit", "preflight", "stream"], kinds


def test_a_busy_answer_lets_a_page_read_retry_after(arena: ArenaServer) -> None:
    run = arena.arena.new_run(SCENARIO_BY_NAME["retry-after"])
    second_origin = f"http://127.0.0.1:{arena.arena.second_port}"
    busy = submit(run.submit_url, second_origin)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.headers["access-control-allow-origin"] == second_origin
    assert "Retry-After" in busy.headers["access-control-expose-headers"]


def test_other_origins_get_no_cors_unless_given() -> None:
    stranger = "http://127.0.0.1:9"
    with ArenaServer() as closed, ArenaServer(cors_origins=frozenset({stranger + "/"})) as opened:
        for server, allowed in ((closed, False), (opened, True)):
            run = server.arena.new_run(SCENARIO_BY_NAME["keepalive"])
            answer = submit(run.submit_url, stranger)
            assert answer.status_code == 202
            assert answer.headers.get("access-control-allow-origin") == (stranger if allowed else None)
            preflight = httpx.options(
                run.submit_url,
                headers={"Origin": stranger, "Access-Control-Request-Method": "POST"},
                timeout=10,
            )
            assert preflight.status_code == (204 if allowed else 403)
            assert submit(run.submit_url, "http://evil.example").headers.get("access-control-allow-origin") is None


def test_preflights_do_not_change_the_grade(arena: ArenaServer) -> None:
    run = arena.arena.new_run(SCENARIO_BY_NAME["cut-mid-event"])
    headers = {"Origin": arena.arena.base_url, "Access-Control-Request-Method": "POST"}
    for _ in range(3):
        assert httpx.options(run.submit_url, headers=headers, timeout=10).status_code == 204
    target = CallerTarget(run.scenario.name, run.base_url, run.submit_url, "hi")
    run.outcome = CallerOutcome(succeeded=True, text=ToyCaller()(target))
    arena.settle(run)
    report = build_report([run], target="toy")
    assert report.ok and not any(result.outcome == "failed" for result in report.results)
    assert len(run.of_kind("preflight")) == 3 and len(run.of_kind("submit")) == 1
