"""What the adversarial worker saw a caller do: every request, and for streams, what was delivered."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from conformance.callers.scenarios import Scenario, WireEvent

HitKind = Literal["submit", "stream", "built-stream", "wrong-stream", "status", "cancel", "preflight", "other"]


@dataclass(slots=True)
class Hit:
    """One request the caller made, with the answer (times in seconds since the run began)."""

    at: float
    listener: Literal["primary", "second"]
    method: str
    url: str
    headers: dict[str, str]
    kind: HitKind = "other"
    body: str | None = None
    job_id: str | None = None
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_excerpt: str = ""
    #: when the answer (for a stream: its last byte) was sent
    answered_at: float | None = None
    note: str = ""
    # --- streams only ---
    last_event_id: str | None = None
    #: ids of the events whose bytes were sent in full, blank line included
    delivered: list[int] = field(default_factory=list)
    #: the worker ended the connection on purpose before ``[DONE]``
    cut: bool = False
    cut_where: str = ""
    done_at: float | None = None
    disconnected_at: float | None = None

    #: the ``end``/``error`` event was sent in full on this connection
    final_delivered: bool = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def last_complete_id(self) -> int:
        """The id a conforming resume names: the last complete event, or where this connection resumed."""
        if self.delivered:
            return self.delivered[-1]
        return int(self.last_event_id) if self.last_event_id and self.last_event_id.isdigit() else 0


@dataclass(slots=True)
class ScriptedJob:
    job_id: str
    scenario: Scenario
    events: list[WireEvent]
    sse_url: str
    #: ``sse_url`` resolved against the submit URL, as a conforming caller requests it
    stream_url: str
    created_at: float
    deleted: bool = False

    @property
    def final_id(self) -> int:
        return self.events[-1].id


@dataclass(frozen=True, slots=True)
class CallerTarget:
    """What a caller under test is handed for one scenario."""

    scenario: str
    base_url: str
    submit_url: str
    prompt: str


@dataclass(slots=True)
class CallerOutcome:
    """What the caller reported to its own user."""

    #: True: a completion; False: a failure; None: unknown (only the wire was observed)
    succeeded: bool | None
    text: str | None = None
    exit_code: int | None = None
    stderr: str = ""
    error: str | None = None
    timed_out: bool = False
    #: the suite stopped the caller because the verdict was already clear (e.g. unbounded retries)
    stopped: str | None = None
    duration_s: float = 0.0

    def summary(self) -> str:
        if self.succeeded is None:
            return "outcome not reported"
        if self.timed_out:
            return f"still running after {self.duration_s:.1f}s (stopped by the suite)"
        if self.stopped:
            return f"stopped by the suite: {self.stopped}"
        if self.succeeded:
            return "reported a completion" + (" (exit 0)" if self.exit_code is not None else "")
        how = f"exit {self.exit_code}" if self.exit_code is not None else "raised"
        stderr_lines = self.stderr.strip().splitlines()
        reason = self.error or (stderr_lines[-1] if stderr_lines else "")
        return f"reported failure ({how}{': ' + reason[:160] if reason else ''})"


class ScenarioRun:
    """One caller run against one scenario, under its own URL prefix ``/run/<token>/<scenario>``."""

    def __init__(self, scenario: Scenario, token: str, base_url: str) -> None:
        self.scenario = scenario
        self.token = token
        self.base_url = base_url
        self.submit_url = base_url + "/v1/inference"
        self.started = time.monotonic()
        self.jobs: list[ScriptedJob] = []
        self.outcome: CallerOutcome | None = None
        self.open_connections = 0
        self._hits: list[Hit] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.started

    def add(self, hit: Hit) -> Hit:
        with self._lock:
            self._hits.append(hit)
        return hit

    @property
    def hits(self) -> list[Hit]:
        with self._lock:
            return list(self._hits)

    def of_kind(self, *kinds: HitKind) -> list[Hit]:
        return [hit for hit in self.hits if hit.kind in kinds]

    def streams(self, job: ScriptedJob) -> list[Hit]:
        return [hit for hit in self.hits if hit.kind == "stream" and hit.job_id == job.job_id]

    def job(self, job_id: str) -> ScriptedJob | None:
        return next((job for job in self.jobs if job.job_id == job_id), None)
