"""Wire schemas of contract v1 (mirrors `openapi/dualcall.yaml`; a test keeps them in sync)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

JobState = Literal["queued", "running", "completed", "failed", "cancelled"]
StopReasonField = Literal["max_tokens", "eos", "stop", "cancelled"]

MAX_TOKENS_LIMIT = 4096
MAX_PROMPT_CHARS = 65536

Prompt = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PROMPT_CHARS)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS_LIMIT)]
Temperature = Annotated[float, msgspec.Meta(ge=0, le=100)]
TopP = Annotated[float, msgspec.Meta(gt=0, le=1)]
TopK = Annotated[int, msgspec.Meta(ge=0, le=100_000)]
Seed = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
StopString = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
StopList = Annotated[list[StopString], msgspec.Meta(max_length=4)]


class InferenceRequest(msgspec.Struct, forbid_unknown_fields=True):
    prompt: Prompt
    max_tokens: MaxTokens | msgspec.UnsetType = msgspec.UNSET
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    seed: Seed | msgspec.UnsetType = msgspec.UNSET
    stop: StopList = msgspec.field(default_factory=list)


class SubmitResponse(msgspec.Struct):
    job_id: str
    sse_url: str
    status_url: str


class ErrorInfo(msgspec.Struct):
    code: str
    message: str


class JobStatus(msgspec.Struct):
    job_id: str
    state: JobState
    tokens_out: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    stop_reason: StopReasonField | None
    error: ErrorInfo | None
    sse_url: str
    max_tokens: int


class QueueInfo(msgspec.Struct):
    active: int
    queued: int
    limit: int


class Health(msgspec.Struct, omit_defaults=True):
    status: Literal["ok", "unavailable"]
    engine: str
    model: str
    contract_version: str
    deterministic: bool
    job_ttl_s: float
    max_tokens_cap: int
    keepalive_s: float
    queue: QueueInfo
    #: submit honours Idempotency-Key (DC-1.9)
    idempotency_key: bool = False
    detail: str = ""


class StartedData(msgspec.Struct):
    job_id: str


class TokenData(msgspec.Struct):
    index: int
    text: str


class EndData(msgspec.Struct):
    tokens_out: int
    stop_reason: StopReasonField
