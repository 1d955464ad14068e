"""What a check gets: the recording probe, the options, and results shared between checks."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import httpx

from conformance.client import SUBMIT_PATH, resolve, retry_after_seconds
from conformance.model import Diagnosis, Exchange
from conformance.probe import Probe, StreamCapture
from conformance.verdicts import CheckFailed, CheckUnverified

if TYPE_CHECKING:
    from conformance.fuzz.tally import FuzzVerdict

PROMPT: Final = "dualcall conformance probe: tell a short story about a worker bee."
#: extra attempts of a submission answered 503 (queue full)
SUBMIT_RETRIES: Final = 3
#: longest Retry-After the suite honours before retrying a submission
MAX_RETRY_AFTER_S: Final = 5.0
#: a job id no worker hands out, for probing the job routes
UNKNOWN_JOB_ID: Final = "dualcallUnknownJob0000000000"
#: how far apart the suite looks at /health and the job again before calling a stalled worker stuck
QUEUE_WATCH_INTERVAL_S: Final = 1.0
#: tokens asked for in ordinary checks: enough to see framing, quick on a real GPU
SHORT_MAX_TOKENS: Final = 24


@dataclass(frozen=True, slots=True)
class Options:
    timeout_s: float = 10.0
    #: longest job TTL the suite waits out to observe reclaim
    ttl_budget_s: float = 6.0
    token: str | None = None


@dataclass(frozen=True, slots=True)
class FuzzSettings:
    max_examples: int = 25
    #: None: random
    seed: int | None = 0


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    sse_url: str
    status_url: str
    body: dict[str, Any]
    response: httpx.Response
    #: the submission as report evidence
    exchange: Exchange | None = None


@dataclass
class Context:
    probe: Probe
    options: Options
    _health: dict[str, Any] | None = None
    _health_fetched: bool = False
    _reference: tuple[Job, StreamCapture] | None = None
    _reference_at: float = 0.0
    diagnoses: list[Diagnosis] = field(default_factory=list)
    #: what the fuzz checks generate from (``--max-examples``, ``--seed``)
    fuzz: FuzzSettings = field(default_factory=FuzzSettings)
    #: progress lines of long checks (the console shows them)
    on_progress: Callable[[str], None] | None = None
    #: why the run stopped waiting for the worker: it stopped making progress (see `judge_stall`)
    stuck: str | None = None
    #: the verdicts of the run's one fuzz run, once it ran (the fuzz checks share it)
    fuzz_verdicts: dict[str, FuzzVerdict] | None = None

    @property
    def base_url(self) -> str:
        return self.probe.base_url

    # -- worker facts ------------------------------------------------------------------------

    def health(self, *, refresh: bool = False) -> dict[str, Any] | None:
        """The worker's /health body when it is JSON, else None (cached unless ``refresh``)."""
        if refresh or not self._health_fetched:
            self._health_fetched = True
            try:
                response = self.probe.request("GET", self.base_url + "/health", auth=False)
                body = response.json()
                self._health = body if isinstance(body, dict) else None
            except (httpx.HTTPError, ValueError):
                self._health = None
        return self._health

    @property
    def deterministic(self) -> bool:
        health = self.health() or {}
        return health.get("deterministic") is True

    @property
    def advertised_cap(self) -> int | None:
        """The worker's ``max_tokens_cap`` from /health, when it advertises one."""
        cap = (self.health() or {}).get("max_tokens_cap")
        return cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None

    @property
    def max_tokens_cap(self) -> int:
        return self.advertised_cap or 4096

    # -- jobs --------------------------------------------------------------------------------

    def body(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": PROMPT, "max_tokens": SHORT_MAX_TOKENS, "temperature": 0}
        body.update(overrides)
        return body

    def submit(self, body: dict[str, Any] | None = None) -> Job:
        """Submit a job the dual-call way; unverified when the worker cannot do that.

        A 503 (queue full, e.g. still draining an earlier check's jobs) is retried after its
        Retry-After, a few times, as a well-behaved client would.
        """
        if self.stuck is not None:
            # one defect, one failure: the check that saw the worker stop carries it
            raise CheckUnverified(f"not run: {self.stuck}", "a worker that keeps making progress (see the failure)")
        body = body or self.body()
        response = self.probe.submit(body)
        for _ in range(SUBMIT_RETRIES):
            if response.status_code != 503:
                break
            retry_after = retry_after_seconds(response.headers)
            time.sleep(1.0 if retry_after is None else min(retry_after, MAX_RETRY_AFTER_S))
            response = self.probe.submit(body)
        if response.status_code != 202:
            raise CheckUnverified(
                f"needs a dual-call submission, but POST {SUBMIT_PATH} answered {response.status_code} "
                f"{response.headers.get('content-type', '')}",
                "a dual-call submit (see DC-SUBMIT-001)",
            )
        try:
            data = response.json()
            job_id, sse_url = data["job_id"], data["sse_url"]
            if not isinstance(job_id, str) or not isinstance(sse_url, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise CheckUnverified(
                "needs a dual-call submission, but the 202 body has no job_id/sse_url strings",
                "a dual-call submit (see DC-SUBMIT-001)",
            ) from None
        status_ref = data.get("status_url") if isinstance(data.get("status_url"), str) else f"{SUBMIT_PATH}/{job_id}"
        return Job(
            job_id=job_id,
            sse_url=resolve(self.probe.submit_url, sse_url),
            status_url=resolve(self.probe.submit_url, status_ref),
            body=body,
            response=response,
            exchange=self.probe.exchanges[-1] if self.probe.exchanges else None,
        )

    def resolve_status(self, response: httpx.Response) -> str:
        """Absolute status URL of a 202 submission."""
        data = response.json()
        reference = data.get("status_url") if isinstance(data.get("status_url"), str) else None
        return resolve(self.probe.submit_url, reference or f"{SUBMIT_PATH}/{data['job_id']}")

    def resolve_stream(self, response: httpx.Response) -> str:
        """Absolute stream URL of a 202 submission."""
        return resolve(self.probe.submit_url, response.json()["sse_url"])

    def job_url(self, job_id: str, suffix: str = "") -> str:
        return f"{self.base_url}{SUBMIT_PATH}/{job_id}{suffix}"

    def reference(self) -> tuple[Job, StreamCapture]:
        """One ordinary job read to its end, shared by the grammar checks.

        Renewed when half the advertised job TTL has passed since it was read, so checks that
        replay or query it never race the worker's reclaim of finished jobs.
        """
        ttl = (self.health() or {}).get("job_ttl_s")
        stale = isinstance(ttl, int | float) and time.monotonic() - self._reference_at > ttl / 2
        if self._reference is None or stale:
            job = self.submit()
            capture = self.probe.stream(job.sse_url)
            self._reference = (job, capture)
            self._reference_at = time.monotonic()
        return self._reference

    def stream_of(self, job: Job, **kwargs: Any) -> StreamCapture:
        """Read the job's stream; a 200 is required, and a stalled read fails with its evidence."""
        capture = self.probe.stream(job.sse_url, **kwargs)
        if capture.status != 200:
            raise CheckFailed(
                f"GET sse_url answered {capture.status} instead of 200 text/event-stream",
                f"body: {capture.excerpt(300)!r}",
            )
        self.judge_stall(job, capture)
        return capture

    def judge_stall(self, job: Job, capture: StreamCapture) -> None:
        """A read that saw no event for ``stall_s``: failed when the worker says it is healthy.

        A generator that deadlocked while /health still answers 200 is the failure DC-4.3 and
        DC-5.1 exist for. Before judging, the suite watches /health's queue counters and the job's
        state and token count for as long again as the stall. When nothing moves, the worker is
        stuck: the check fails with that evidence and the rest of the run does not wait on it again
        (`submit` answers unverified).
        When something moves, a queued job merely waits behind other work (unverified), while a
        running job that sent nothing is a stalled generator (failed).
        """
        if not capture.stalled:
            return
        deadline, self.probe.deadline = self.probe.deadline, None  # a few bounded requests, past the budget if need be
        try:
            health, status = self._health_and_state(job)
            state = _state(status)
            moved = self._anything_moves(health, status, job)
        finally:
            self.probe.deadline = deadline
        evidence = [
            f"after {len(capture.protocol_events)} events, no event for {self.probe.stall_s:g} s "
            f"(keep-alive comments: {len(capture.comments)})",
            f"/health answered {health.status_code}; the job's status answered {status.status_code}"
            + (f" with state {state!r}" if state else ""),
        ]
        shown = [exchange for exchange in (capture.exchange,) if exchange is not None]
        if state == "queued" and moved:
            raise CheckUnverified(
                f"the job stayed queued for {self.probe.stall_s:g} s while the worker worked on other jobs, "
                "so its stream could not be read",
                "a worker that is not busy with other clients' jobs during the run",
            )
        if not moved:
            queue = _queue(health)
            evidence.append(
                f"neither /health's queue counters ({queue}) nor the job's state or token count changed while the "
                f"suite watched for {self.probe.stall_s:g} s more"
                if queue is not None
                else "the worker's /health advertises no queue counters, and the job's state and token count did not "
                f"change while the suite watched for {self.probe.stall_s:g} s more"
            )
            self._declare_stuck(health, state, evidence)
            raise CheckFailed(
                f"nothing moves while /health says {health.status_code}: the job stayed {state or 'unreadable'} "
                f"for {self.probe.stall_s:g} s with no event, and the queue did not move",
                *evidence,
                exchanges=shown,
                timing=True,
            )
        raise CheckFailed(
            f"the stream stalled: no event for {self.probe.stall_s:g} s while /health said {health.status_code}"
            + (f" and the job was {state!r}" if state else ""),
            *evidence,
            exchanges=shown,
            timing=True,
        )

    def _declare_stuck(self, health: httpx.Response, state: str | None, evidence: list[str]) -> None:
        self.stuck = (
            f"the worker stopped making progress: a job stayed {state or 'unreadable'} for {self.probe.stall_s:g} s "
            f"and nothing moved, while /health answered {health.status_code}"
        )
        self.diagnoses.append(
            Diagnosis(
                name="worker stopped making progress",
                summary=f"{self.stuck}. Checks after this point were not run (unverified), so that one "
                "defect is reported once.",
                observations=evidence,
                fixes=[
                    "Find what stops the engine from taking the next job (a reader that disconnected, "
                    "a lock held by a cancelled generator); /health should not say ok while it is stuck.",
                    "If other clients were using this worker during the run, run the gate against a dedicated worker.",
                ],
                explains_failures=False,
            )
        )

    def _health_and_state(self, job: Job) -> tuple[httpx.Response, httpx.Response]:
        health = self.probe.request("GET", self.base_url + "/health", auth=False)
        return health, self.probe.request("GET", job.status_url)

    def _anything_moves(self, first_health: httpx.Response, first_status: httpx.Response, job: Job) -> bool:
        """Whether /health's queue counters, or the job's state or token count, change within a watch.

        The watch is as long as the stall itself: a worker that is merely slow (a loaded machine, a
        long job ahead in the queue) shows some movement in that time; a stuck one shows none.
        """
        before, progress = _queue(first_health), _progress(first_status)
        watch_until = time.monotonic() + self.probe.stall_s
        while time.monotonic() < watch_until:
            time.sleep(QUEUE_WATCH_INTERVAL_S)
            health, status = self._health_and_state(job)
            if _progress(status) != progress or (before is not None and _queue(health) != before):
                return True
        return False

    def ttl(self) -> float:
        """The advertised job TTL when the suite may wait it out; unverified otherwise."""
        ttl = (self.health() or {}).get("job_ttl_s")
        budget = self.options.ttl_budget_s
        if not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl <= 0:
            raise CheckUnverified(
                "the worker does not advertise job_ttl_s in /health, so the suite cannot tell when reclaim is due",
                "advertise job_ttl_s in /health (DC-5.1)",
            )
        if ttl > budget:
            raise CheckUnverified(
                f"job_ttl_s is {ttl:g} s, longer than --ttl-budget {budget:g} s",
                f"start the worker with a job TTL of at most {budget:g} s, or pass --ttl-budget {math.ceil(ttl) + 10}",
            )
        return float(ttl)

    def completed_reference(self) -> tuple[Job, StreamCapture]:
        job, capture = self.reference()
        if capture.status != 200 or not capture.events:
            raise CheckUnverified(
                f"the reference stream did not deliver events (status {capture.status})",
                "a stream that delivers events (see DC-STREAM-001)",
            )
        return job, capture


def _state(status: httpx.Response) -> str | None:
    try:
        state = status.json().get("state") if status.status_code == 200 else None
    except (ValueError, AttributeError):
        return None
    return state if isinstance(state, str) else None


def _progress(status: httpx.Response) -> tuple[str | None, object]:
    """The job's state and token count, as its status reports them."""
    try:
        tokens = status.json().get("tokens_out") if status.status_code == 200 else None
    except (ValueError, AttributeError):
        tokens = None
    return _state(status), tokens


def _queue(health: httpx.Response) -> dict[str, Any] | None:
    """The queue counters /health advertises (``{"active", "queued", ...}``), when it does."""
    try:
        queue = health.json().get("queue")
    except (ValueError, AttributeError):
        return None
    return queue if isinstance(queue, dict) else None


def event_data(capture: StreamCapture, event_type: str) -> list[dict[str, Any]]:
    """JSON payloads of the events of one type (unparseable ones skipped)."""
    out: list[dict[str, Any]] = []
    for event in capture.protocol_events:
        if event.event == event_type:
            try:
                data = json.loads(event.data)
            except ValueError:
                continue
            if isinstance(data, dict):
                out.append(data)
    return out
