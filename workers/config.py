"""Runtime settings of a worker, shared by the CLI, the app factory and the registry."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

#: an origin as browsers send it: scheme://host[:port], no path, no trailing slash
_ORIGIN: Final = re.compile(r"^https?://[^/?#\s@]+$")

#: event streams one worker serves at once by default (`--max-open-streams`)
DEFAULT_MAX_OPEN_STREAMS: Final = 1024

#: URL schemes `--registry` accepts (redis-py's own)
REGISTRY_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    #: seconds a job may wait for its first reader, and finished jobs are kept for replay
    job_ttl_s: float = 60.0
    #: jobs allowed to wait for a generation slot before submit answers 503
    queue_limit: int = 64
    #: seconds between ``: keep-alive`` comments on an idle stream
    keepalive_s: float = 15.0
    #: bearer token required on job routes; None disables auth
    auth_token: str | None = None
    #: largest accepted request body, in bytes
    max_body_bytes: int = 1_048_576
    #: max_tokens used when the request has none
    default_max_tokens: int = 64
    #: upper bound the worker clamps max_tokens to
    max_tokens_cap: int = 4096
    #: Retry-After seconds sent with 503 when the queue is full
    retry_after_s: int = 1
    #: event streams served at once; more are answered 503 with Retry-After
    max_open_streams: int = DEFAULT_MAX_OPEN_STREAMS
    #: where jobs live: None keeps them in this process; ``redis://host:port/db`` shares them with a pool
    registry_url: str | None = None
    #: browser origins allowed by CORS; empty (the default) sends no Access-Control-* header
    cors_origins: tuple[str, ...] = ()
    #: /docs loads its renderer from a pinned CDN URL with SRI instead of the worker's own copy
    docs_cdn: bool = False

    def __post_init__(self) -> None:
        if self.job_ttl_s <= 0:
            raise ValueError("job TTL must be positive")
        if self.queue_limit < 0:
            raise ValueError("queue limit must be >= 0")
        if self.keepalive_s <= 0:
            raise ValueError("keep-alive interval must be positive")
        if not 1 <= self.default_max_tokens <= self.max_tokens_cap:
            raise ValueError("default max_tokens must be between 1 and the cap")
        if self.max_open_streams < 1:
            raise ValueError("max open streams must be positive")
        if self.max_body_bytes < 1:
            raise ValueError("max body bytes must be positive")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("auth token must not be empty")
        if self.registry_url is not None and not self.registry_url.startswith(REGISTRY_SCHEMES):
            raise ValueError(f"registry must be a {'/'.join(REGISTRY_SCHEMES)} URL, got {self.registry_url!r}")
        for origin in self.cors_origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"--cors-origin must look like http://host:port (no path), got {origin!r}")
