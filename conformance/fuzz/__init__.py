"""The fuzzing bridge: schemathesis drives the contract document against a worker.

Four checks (registered in `conformance.checks.fuzzing`) come out of one run:

* ``DC-FUZZ-001`` — submit (``POST /v1/inference``) gets the deterministic boundary cases of
  schemathesis' coverage phase (every field's smallest and largest valid value, min-1, max+1,
  ``null``, wrong types; see `conformance.fuzz.boundary`) and positive and negative bodies generated
  from the contract's ``InferenceRequest`` schema; valid ones must be accepted (202, or 503 when
  the queue is full), invalid ones rejected with a documented 4xx, and nothing may answer 5xx.
  A ``max_tokens`` between the worker's advertised ``max_tokens_cap`` and the contract's maximum
  may be clamped or rejected with 422 (DC-1.1).
* ``DC-FUZZ-002`` — every fuzzed response (submit, and status/cancel/stream with random job
  ids, which must answer 404) matches its documented status, content type, headers and schema;
  event streams are validated event by event against ``itemSchema``.
* ``DC-FUZZ-003`` — schemathesis' state machine follows submit's OpenAPI links (``stream``,
  ``status``, ``cancel``) with the returned ``job_id`` and runs the same checks plus the stateful
  ones (``use_after_free``, ``ensure_resource_availability``) on every step.
* ``DC-FUZZ-004`` — every job accepted for a valid body (boundary, generated or stateful) is read
  to its end (`conformance.fuzz.streams`): none may end in an ``error`` whose code is not a
  runtime-limit code (DC-2.15).

The parts: `phases` (what is sent, in which order), `session` (the state the phases share, and
how each response is judged), `tally` (findings per check and the verdict), `evidence`
(schemathesis' requests and responses as report exchanges), `boundary` (the coverage phase through
schemathesis' CLI), `streams` (reading accepted jobs to their end), `cases` (what the bridge does
to generated cases), `run` (one run from budget to clean-up: `run.fuzz_target` inside a conformance run,
`run.run_fuzz` on its own).

Generated ``max_tokens`` are clamped to :data:`MAX_FUZZ_TOKENS` so that a real engine is never
asked for thousands of tokens (the boundary cases keep theirs: that is what they test), and jobs
accepted while fuzzing are cancelled again once their streams are read.

schemathesis and hypothesis are imported inside the run only: importing this package is cheap
and has no side effects.
"""

from __future__ import annotations

from conformance.fuzz.cases import MAX_FUZZ_TOKENS, clamp_max_tokens, clamp_or_reject
from conformance.fuzz.session import FUZZ_CHECK_IDS
from conformance.fuzz.tally import FuzzVerdict

__all__ = [
    "FUZZ_CHECK_IDS",
    "MAX_FUZZ_TOKENS",
    "FuzzVerdict",
    "clamp_max_tokens",
    "clamp_or_reject",
]
