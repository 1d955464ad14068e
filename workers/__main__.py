"""``python -m workers mock|legacy|exllamav2|gateway [options]`` — run a worker locally."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import logging.config
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from workers import __version__
from workers.config import DEFAULT_MAX_OPEN_STREAMS, WorkerSettings
from workers.engines.base import Engine, EngineUnavailable
from workers.logs import LOG_FORMATS, log_config

USAGE_ERROR = 2
TOKEN_ENV = "DUALCALL_TOKEN"
#: read when $DUALCALL_TOKEN is unset; the conformance CLI never knew this name
DEPRECATED_TOKEN_ENV = "DUALCALL_AUTH_TOKEN"
log = logging.getLogger("workers")


N = TypeVar("N", int, float)


def _number(kind: Callable[[str], N], *, low: N, high: N | None = None) -> Callable[[str], N]:
    """An argparse type: parse with ``kind`` and check ``low <= value <= high`` (finite only)."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (high is not None and value > high):
            bounds = f">= {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def _positive_float(text: str) -> float:
    value = _number(float, low=0.0)(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


_port = _number(int, low=0, high=65535)
_non_negative_int = _number(int, low=0)
_positive_int = _number(int, low=1)
_non_negative_float = _number(float, low=0.0)


def _token_from_env() -> str | None:
    token = os.environ.get(TOKEN_ENV)
    legacy = os.environ.get(DEPRECATED_TOKEN_ENV)
    if legacy is not None and token is None:
        log.warning("$%s is deprecated and will be removed: set $%s instead", DEPRECATED_TOKEN_ENV, TOKEN_ENV)
        return legacy
    if legacy is not None:
        log.warning("$%s is deprecated and ignored: $%s is set", DEPRECATED_TOKEN_ENV, TOKEN_ENV)
    return token


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualcall-worker",
        description="Run a dualcall worker: the dual-call contract (POST job -> GET SSE stream) over an engine.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    net = common.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    net.add_argument("--port", type=_port, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    net.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one log line per request (default: on)",
    )
    net.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text lines or one JSON object per line (default: text)",
    )
    web = common.add_argument_group("browser")
    web.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser pages from ORIGIN (e.g. http://localhost:3000; repeatable); CORS is off by default",
    )
    web.add_argument(
        "--docs-cdn",
        action="store_true",
        help="/docs loads its renderer from a pinned CDN URL with SRI instead of the worker's own copy",
    )
    net.add_argument(
        "--shutdown-timeout-s",
        type=_positive_float,
        default=5.0,
        help="on SIGTERM/SIGINT, seconds running jobs get to finish while new ones are refused (the drain); "
        "then what still runs ends with `shutdown` (default: %(default)s)",
    )
    net.add_argument(
        "--send-timeout-s",
        type=_positive_float,
        default=30.0,
        help="seconds a client may leave sent bytes unread before it is disconnected; a stalled stream reader "
        "can resume later (default: %(default)s)",
    )
    core = common.add_argument_group("contract")
    core.add_argument("--ttl-s", type=_positive_float, default=60.0, help="job TTL in seconds (default: %(default)s)")
    core.add_argument(
        "--queue-limit",
        type=_non_negative_int,
        default=64,
        help="jobs that may wait for a slot before 503 (default: %(default)s)",
    )
    core.add_argument(
        "--keepalive-s",
        type=_positive_float,
        default=15.0,
        help="seconds between keep-alive comments (default: %(default)s)",
    )
    core.add_argument(
        "--max-tokens-cap", type=_positive_int, default=4096, help="upper bound for max_tokens (default: %(default)s)"
    )
    core.add_argument(
        "--max-body-bytes", type=_positive_int, default=1_048_576, help="largest request body (default: %(default)s)"
    )
    core.add_argument(
        "--max-open-streams",
        type=_positive_int,
        default=1024,
        help="event streams served at once; more are answered 503 with Retry-After (default: %(default)s)",
    )
    core.add_argument(
        "--auth-token",
        help=f"require this bearer token on job routes (default: ${TOKEN_ENV}, else off)",
    )
    core.add_argument(
        "--registry",
        default=None,
        metavar="URL",
        help="where jobs live: this process (default) or redis://host:port/db, shared by a pool (docs/scaling.md)",
    )
    sub = parser.add_subparsers(dest="engine", required=True, metavar="{mock,legacy,exllamav2,gateway}")
    mock = sub.add_parser("mock", parents=[common], help="deterministic mock engine (for orchestrator authors and CI)")
    mock.add_argument(
        "--token-delay-ms", type=_non_negative_float, default=0.0, help="delay per token (default: %(default)s)"
    )
    mock.add_argument(
        "--fail-after",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="simulate an engine failure after N tokens",
    )
    mock.add_argument(
        "--concurrency", type=_positive_int, default=16, help="jobs generating at once (default: %(default)s)"
    )
    mock.add_argument(
        "--fail-prompt",
        default=None,
        metavar="TEXT",
        help="with --fail-after: only jobs whose prompt contains TEXT fail (default: every job)",
    )
    legacy = sub.add_parser(
        "legacy", parents=[common], help="the legacy direct-SSE worker (negative control; fails conformance)"
    )
    legacy.add_argument(
        "--token-delay-ms", type=_non_negative_float, default=0.0, help="delay per token (default: %(default)s)"
    )
    exl = sub.add_parser("exllamav2", parents=[common], help="ExLlamaV2 engine on CUDA (needs the exllamav2 extra)")
    exl.add_argument("--model", required=True, help="model directory (config.json + safetensors)")
    exl.add_argument(
        "--max-seq-len", type=_positive_int, default=2048, help="context length of the cache (default: %(default)s)"
    )
    from workers.engines.upstream.cli import add_gateway_parser

    add_gateway_parser(sub, [common], positive_float=_positive_float, positive_int=_positive_int)
    return parser


def _engine(args: argparse.Namespace) -> Engine:
    if args.engine == "mock":
        from workers.engines.mock import MockEngine

        return MockEngine(
            token_delay_s=args.token_delay_ms / 1000,
            fail_after_tokens=args.fail_after,
            fail_prompt=args.fail_prompt,
            max_concurrency=args.concurrency,
        )
    if args.engine == "gateway":
        from workers.engines.upstream.cli import gateway_engine

        return gateway_engine(args)
    from workers.engines.exllamav2 import ExLlamaV2Engine

    return ExLlamaV2Engine(args.model, max_seq_len=args.max_seq_len)


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    """The core's settings from the contract options every worker command shares."""
    return WorkerSettings(
        job_ttl_s=args.ttl_s,
        queue_limit=args.queue_limit,
        keepalive_s=args.keepalive_s,
        auth_token=args.auth_token or None,
        max_body_bytes=args.max_body_bytes,
        max_tokens_cap=args.max_tokens_cap,
        default_max_tokens=min(64, args.max_tokens_cap),
        registry_url=getattr(args, "registry", None),  # parsers that predate --registry lack it
        max_open_streams=getattr(args, "max_open_streams", DEFAULT_MAX_OPEN_STREAMS),
        # getattr: other front ends (tests/broken_workers/serve.py) build their own parsers
        cors_origins=tuple(getattr(args, "cors_origin", None) or ()),
        docs_cdn=getattr(args, "docs_cdn", False),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging_setup = log_config(args.log_format)
    logging.config.dictConfig(logging_setup)
    if args.auth_token is None:
        args.auth_token = _token_from_env()
    from workers import server

    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        sock = server.bind(args.host, args.port)
    except OSError as exc:
        print(f"dualcall-worker: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return USAGE_ERROR
    url = server.base_url(sock)
    if args.engine == "legacy":
        from workers.legacy import create_legacy_app

        banner = (
            f"dualcall LEGACY direct-SSE worker (negative control) on {url} — "
            f"POST {url}/v1/inference answers with the stream itself"
        )
        server.serve(
            create_legacy_app(args.token_delay_ms / 1000),
            sock,
            banner=banner,
            access_log=args.access_log,
            log_config=logging_setup,
            shutdown_timeout_s=args.shutdown_timeout_s,
            send_timeout_s=args.send_timeout_s,
        )
        return 0
    engine = _engine(args)
    if args.engine == "exllamav2":
        # load before binding the app so a missing package, GPU or model is one line and exit 2
        import asyncio

        try:
            asyncio.run(_preflight(engine))
        except EngineUnavailable as exc:
            print(f"dualcall-worker: {exc}", file=sys.stderr)
            sock.close()
            return USAGE_ERROR
        settings = capped_to_engine(settings, engine)
    if settings.registry_url is not None:
        problem = _check_registry(settings.registry_url)
        if problem:
            print(f"dualcall-worker: {problem}", file=sys.stderr)
            sock.close()
            return USAGE_ERROR
    from workers.app import create_app

    app = create_app(engine, settings)
    auth = "on" if settings.auth_token else "off"
    banner = (
        f"dualcall {engine.name} worker ({engine.model}) on {url} — docs {url}/docs, health {url}/health, "
        f"job TTL {settings.job_ttl_s:g}s, auth {auth}. Ctrl-C to stop."
    )
    server.serve(
        app,
        sock,
        banner=banner,
        access_log=args.access_log,
        log_config=logging_setup,
        shutdown_timeout_s=args.shutdown_timeout_s,
        send_timeout_s=args.send_timeout_s,
    )
    return 0


def _check_registry(url: str) -> str | None:
    """Why the registry at ``url`` cannot serve (one line), or None."""
    try:
        from workers.registry.redis_backend import check_registry
    except ImportError:
        return "--registry needs the redis client: pip install 'dualcall[redis]'"
    import asyncio

    try:
        asyncio.run(check_registry(url))
    except ValueError as exc:
        return str(exc)
    return None


def capped_to_engine(settings: WorkerSettings, engine: Engine) -> WorkerSettings:
    """Lower ``max_tokens_cap`` to what a started engine can serve (its ``max_tokens_limit``, if any)."""
    limit = getattr(engine, "max_tokens_limit", None)
    if not isinstance(limit, int) or limit < 1 or limit >= settings.max_tokens_cap:
        return settings
    return dataclasses.replace(
        settings, max_tokens_cap=limit, default_max_tokens=min(settings.default_max_tokens, limit)
    )


async def _preflight(engine: Engine) -> None:
    """Run the engine's ``preflight()`` if it has one, else ``start()`` it (the app's start is then a no-op)."""
    check = getattr(engine, "preflight", None)
    await (check() if check is not None else engine.start())


if __name__ == "__main__":
    raise SystemExit(main())
