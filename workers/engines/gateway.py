"""The gateway engine: the dual-call contract in front of an LLM server that streams the legacy way.

``dualcall-worker gateway --upstream http://vllm:8000 --upstream-api openai-chat`` serves the
contract with the worker core (jobs, resume, replay, DELETE, TTL, queue limit, auth, metrics,
the Redis registry) and streams each job from the upstream server over HTTP: one upstream
request per job, its deltas yielded as `Chunk`s. See docs/gateway.md for the mapping tables.

- **Health is the upstream's.** A probe asks the upstream every `PROBE_INTERVAL_S` (its model
  list, or ``/health`` for the legacy shape); while it cannot be reached ``health()`` is not ok, so
  /health answers 503 and submits are refused with 503 + Retry-After instead of accepted jobs that
  would fail. A connection lost mid-job marks the upstream down at once.
- **Cancel reaches the upstream.** The core closes the iterator on DELETE, TTL reclaim and
  shutdown; the upstream response is closed in ``finally``, the connection dropped, and servers
  that watch their client (vLLM, transformers serve) stop generating.
- **Failures are runtime limits.** The upstream failing (unreachable, 5xx, cut mid-stream, an error
  inside the stream, silent past ``--upstream-timeout-s``) ends the job with ``upstream_error``; a
  prompt the upstream says is over its context ends it with ``context_length_exceeded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Coroutine
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx
from httpx_sse import EventSource, SSEError

from workers.engines.base import Chunk, EngineError, EngineHealth, EngineUnavailable, GenerationRequest, StopReason
from workers.engines.upstream.apis import (
    PATHS,
    PROBE_PATHS,
    TopKMode,
    UpstreamApi,
    UpstreamProtocolError,
    error_detail,
    is_context_length_error,
    names_top_k,
    parse_event,
    request_body,
    stop_reason,
)

log = logging.getLogger("workers.gateway")

#: runtime-limit code (contract DC-2.15) of a job whose upstream failed
UPSTREAM_ERROR: Final = "upstream_error"
CONTEXT_LENGTH_EXCEEDED: Final = "context_length_exceeded"
PROBE_INTERVAL_S: Final = 1.0
#: the probe must not wait as long as a generation may (a slow prefill is no outage)
PROBE_CONNECT_TIMEOUT_S: Final = 5.0
#: bytes of an upstream error body read for its message
_ERROR_BODY_LIMIT: Final = 16_384
_LEGACY_MODEL: Final = "upstream"
#: the model an OpenAI upstream serves is asked at the first probe; until then (banner, /health 503):
_MODEL_UNKNOWN: Final = "unknown until the upstream answers"
#: after the upstream finished: events ([DONE], usage) and seconds read before the connection is dropped
_DRAIN_EVENTS: Final = 4
_DRAIN_S: Final = 1.0


def display_url(url: str) -> str:
    """``url`` without user:password, for logs and /health."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


class GatewayEngine:
    """Streams each job from one upstream server; see the module docstring."""

    name = "gateway"
    #: the upstream may sample, batch or be replaced: the gateway promises nothing
    deterministic = False

    def __init__(
        self,
        upstream: str,
        api: UpstreamApi,
        *,
        model: str | None = None,
        token: str | None = None,
        timeout_s: float = 60.0,
        concurrency: int = 16,
        top_k: TopKMode | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        probe_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--upstream must be an http(s):// URL, got {upstream!r}")
        if concurrency < 1:
            raise ValueError("--upstream-concurrency must be >= 1")
        if timeout_s <= 0:
            raise ValueError("--upstream-timeout-s must be > 0")
        self.upstream = upstream.rstrip("/")
        self.api: UpstreamApi = api
        self.model = model or (_LEGACY_MODEL if api == "legacy" else _MODEL_UNKNOWN)
        self._pinned_model = model is not None
        self._warned_model = False
        self.max_concurrency = concurrency
        self.timeout_s = timeout_s
        self.top_k_mode: TopKMode = top_k or ("drop" if api == "legacy" else "auto")
        #: `auto` sends top_k until the upstream refuses it once
        self._send_top_k = self.top_k_mode != "drop"
        self._token = token
        self._transport = transport
        self._probe_interval_s = probe_interval_s
        self._client: httpx.AsyncClient | None = None
        self._probe: asyncio.Task[None] | None = None
        #: background work: sends of cancelled jobs, closing their responses, draining finished ones
        self._orphans: set[asyncio.Future[Any]] = set()
        self._up = False
        self._down_reason = "the upstream has not been reached yet"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._client = httpx.AsyncClient(
            base_url=self.upstream,
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, PROBE_CONNECT_TIMEOUT_S)),
            # no cap on connections: the core's slots cap the jobs, and a pool under contention is
            # where httpcore loses connections of cancelled requests (encode/httpcore#1093)
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=self.max_concurrency + 1),
            transport=self._transport,
            follow_redirects=False,
        )
        if not await self.probe():
            # not fatal: the gateway and its upstream may start in any order
            log.warning(
                "upstream %s is not up yet (%s): /health answers 503 and submits are refused until it is",
                display_url(self.upstream),
                self._down_reason,
            )
        self._probe = asyncio.get_running_loop().create_task(self._probe_forever(), name="dualcall-upstream-probe")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if self._orphans:
            await asyncio.wait(self._orphans, timeout=PROBE_CONNECT_TIMEOUT_S)
            for left in self._orphans:
                left.cancel()
        if self._client is not None:
            await self._client.aclose()
        self._up = False
        self._down_reason = "the gateway is closed"

    def health(self) -> EngineHealth:
        return EngineHealth(
            ok=self._up,
            detail="" if self._up else f"upstream {display_url(self.upstream)}: {self._down_reason}",
            extra={"gateway": self.describe()},
        )

    def describe(self) -> dict[str, object]:
        """What /health's ``gateway`` field says about the upstream and the mapping."""
        if self.api == "legacy" or self.top_k_mode == "drop":
            top_k = "dropped"
        elif self._send_top_k:
            top_k = "passed"
        else:
            top_k = "dropped (the upstream refused it)"
        return {
            "upstream": display_url(self.upstream),
            "upstream_api": self.api,
            "upstream_up": self._up,
            "top_k": top_k,
            "concurrency": self.max_concurrency,
        }

    # -- liveness ---------------------------------------------------------------------------

    def _client_or_raise(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineUnavailable("the gateway engine is not started")
        return self._client

    def _mark_down(self, reason: str) -> None:
        if self._up:
            log.warning("upstream %s is down: %s", display_url(self.upstream), reason)
        self._up = False
        self._down_reason = reason

    async def probe(self) -> bool:
        """Ask the upstream once; update ``health()``; True if it is up."""
        client = self._client_or_raise()
        try:
            response = await client.get(PROBE_PATHS[self.api])
        except httpx.HTTPError as exc:
            self._mark_down(f"unreachable ({_describe(exc)})")
            return False
        if response.status_code != 200:
            hint = " (check --upstream-token)" if response.status_code in (401, 403) else ""
            self._mark_down(f"GET {PROBE_PATHS[self.api]} answered {response.status_code}{hint}")
            return False
        if self.api != "legacy":
            problem = self._check_model(response)
            if problem is not None:
                self._mark_down(problem)
                return False
        if not self._up:
            log.info("upstream %s is up (model %s)", display_url(self.upstream), self.model)
        self._up = True
        self._down_reason = ""
        return True

    def _check_model(self, response: httpx.Response) -> str | None:
        """Pick the upstream's first model unless one is pinned; why the model list is unusable, or None."""
        try:
            ids = [str(entry["id"]) for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            return "GET /v1/models did not answer an OpenAI model list"
        if not ids:
            return "GET /v1/models lists no model"
        if not self._pinned_model:
            self.model = ids[0]
        elif self.model not in ids and not self._warned_model:
            # only a warning: some servers answer to names they do not list (Ollama's `llama3` is
            # listed as `llama3:latest`); a name the upstream refuses fails its jobs as upstream_error
            self._warned_model = True
            log.warning("--upstream-model %r is not in the upstream's /v1/models: %s", self.model, ", ".join(ids[:10]))
        return None

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            await self.probe()

    # -- generation -------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        client = self._client_or_raise()
        upstream = _Stream(await self._open(client, request))
        # whatever ends the job (its end, an error, the core closing this iterator on DELETE, TTL
        # reclaim or shutdown), `finally` settles the upstream response: closed (the connection
        # dropped, so the upstream stops) unless the upstream had finished, then read to its end
        # in the background so the connection returns to the pool
        try:
            async with contextlib.aclosing(self._chunks(upstream, request)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except httpx.TimeoutException:
            raise EngineError(
                f"the upstream sent nothing for {self.timeout_s:g}s (--upstream-timeout-s)", code=UPSTREAM_ERROR
            ) from None
        except httpx.TransportError as exc:
            self._mark_down(f"the connection broke mid-stream ({_describe(exc)})")
            raise EngineError(
                f"the upstream connection broke mid-stream: {_describe(exc)}", code=UPSTREAM_ERROR
            ) from None
        except (SSEError, UpstreamProtocolError) as exc:
            raise EngineError(f"the upstream stream is malformed: {exc}", code=UPSTREAM_ERROR) from None
        finally:
            if upstream.finished:
                self._adopt(upstream.drain())
            else:
                await upstream.close()

    def _adopt(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background; `close` waits for it (bounded)."""
        task = asyncio.ensure_future(work)
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def _open(self, client: httpx.AsyncClient, request: GenerationRequest) -> httpx.Response:
        """Send the upstream request; the open streaming response, or an `EngineError` saying why not."""
        body = request_body(self.api, request, self.model, send_top_k=self._send_top_k)
        for _attempt in range(2):
            try:
                http_request = client.build_request(
                    "POST", PATHS[self.api], json=body, headers={"Accept": "text/event-stream"}
                )
                response = await self._send(client, http_request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                self._mark_down(f"unreachable ({_describe(exc)})")
                raise EngineError(f"the upstream is unreachable: {_describe(exc)}", code=UPSTREAM_ERROR) from None
            except httpx.TimeoutException:
                raise EngineError(
                    f"the upstream did not answer within {self.timeout_s:g}s (--upstream-timeout-s)",
                    code=UPSTREAM_ERROR,
                ) from None
            except httpx.TransportError as exc:  # connected, then lost before the answer
                self._mark_down(f"the connection broke ({_describe(exc)})")
                raise EngineError(f"the upstream connection broke: {_describe(exc)}", code=UPSTREAM_ERROR) from None
            if response.status_code == 200:
                return response
            try:
                detail = error_detail(await _read_limited(response))
            except httpx.HTTPError:
                detail = "(the error body could not be read)"
            finally:
                await response.aclose()
            if "top_k" in body and self.top_k_mode == "auto" and names_top_k(detail):
                log.warning("upstream refused top_k (%s): no longer sending it", detail)
                self._send_top_k = False
                body = {key: value for key, value in body.items() if key != "top_k"}
                continue
            raise _answer_error(response.status_code, detail)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
        """``client.send(stream=True)``, never cancelled half-way.

        A request cancelled while httpcore opens its connection can leave that connection in the
        pool for good (encode/httpcore#1093). So the send runs in its own task: a job cancelled
        meanwhile (DELETE, TTL, shutdown) stops waiting at once, and the response, when it comes,
        is closed right away, which tells the upstream to stop.
        """
        sending = asyncio.ensure_future(client.send(request, stream=True))
        try:
            return await asyncio.shield(sending)
        except asyncio.CancelledError:
            self._orphans.add(sending)
            sending.add_done_callback(self._close_orphan)
            raise

    def _close_orphan(self, sending: asyncio.Future[httpx.Response]) -> None:
        self._orphans.discard(sending)
        if sending.cancelled() or sending.exception() is not None:
            return
        self._adopt(sending.result().aclose())

    async def _chunks(self, upstream: _Stream, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        counted = 0
        text = ""
        finish: StopReason | None = None
        usage: int | None = None
        async for event in upstream.events:
            delta = parse_event(self.api, event.event, event.data)
            if delta.error is not None:
                raise EngineError(f"the upstream failed mid-stream: {delta.error}", code=UPSTREAM_ERROR)
            if delta.text and finish is None:
                counted += 1
                if request.stop:
                    text += delta.text
                yield Chunk(delta.text, tokens=1)
            if delta.finish_reason is not None and finish is None:
                finish = stop_reason(delta.finish_reason, request, text, delta.matched_stop)
                if delta.finish_reason not in ("stop", "length"):
                    log.info("upstream finish_reason %r reported as %s", delta.finish_reason, finish)
            if delta.completion_tokens is not None:
                usage = delta.completion_tokens
            # the usage chunk comes with or right after the finish chunk; [DONE] ends it all.
            # A clean end of the response without [DONE] ends it too (transformers serve sends none).
            if delta.done or (finish is not None and usage is not None):
                break
        upstream.finished = True
        # a delta may cover several tokens: the upstream's count, where it gives one, is the truth
        extra = 0 if usage is None else max(0, min(usage, request.max_tokens) - counted)
        if finish is not None:
            yield Chunk("", tokens=extra, stop_reason=finish)
        elif extra:
            yield Chunk("", tokens=extra)


class _Stream:
    """One job's upstream response and its SSE events."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.events = EventSource(response).aiter_sse()
        #: the upstream said it is done: what may follow ([DONE], the end of the body) is no token
        self.finished = False

    async def close(self) -> None:
        await self.events.aclose()
        await self.response.aclose()

    async def drain(self) -> None:
        """Read what the upstream sends after it finished, so the connection can serve the next job.

        Bounded: an upstream that keeps streaming (the legacy shape after a ``[DONE]`` token) or
        stays silent is closed instead, which costs only that connection.
        """
        try:
            async with asyncio.timeout(_DRAIN_S):
                extra = 0
                async for _event in self.events:
                    extra += 1
                    if extra > _DRAIN_EVENTS:
                        break
        except (TimeoutError, httpx.HTTPError, SSEError):
            pass  # the connection is dropped below; the job is already complete
        finally:
            await self.close()


async def _read_limited(response: httpx.Response) -> bytes:
    body = bytearray()
    async for part in response.aiter_bytes():
        body += part
        if len(body) >= _ERROR_BODY_LIMIT:
            break
    return bytes(body)


def _answer_error(status: int, detail: str) -> EngineError:
    """The job's error for an upstream that answered ``status`` instead of a stream."""
    if status in (400, 413, 422) and is_context_length_error(detail):
        return EngineError(f"the prompt does not fit the upstream model: {detail}", code=CONTEXT_LENGTH_EXCEEDED)
    hint = " (check --upstream-token)" if status in (401, 403) else ""
    return EngineError(f"the upstream answered {status}{hint}: {detail}", code=UPSTREAM_ERROR)


def _describe(exc: BaseException) -> str:
    """``ConnectError: [Errno 111] Connection refused``: type and message, one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
