"""``python -m workers mock|legacy|exllamav2 [options]`` — run a worker locally."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from workers.config import WorkerSettings
from workers.engines.base import Engine, EngineUnavailable

USAGE_ERROR = 2


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualcall-worker",
        description="Run a dualcall worker: the dual-call contract (POST job -> GET SSE stream) over an engine.",
    )
    common = argparse.ArgumentParser(add_help=False)
    net = common.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    net.add_argument(
        "--port", type=_non_negative_int, default=8000, help="port; 0 picks a free one (default: %(default)s)"
    )
    net.add_argument("--access-log", action="store_true", help="log every request")
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
        "--max-tokens-cap", type=int, default=4096, help="upper bound for max_tokens (default: %(default)s)"
    )
    core.add_argument(
        "--max-body-bytes", type=int, default=1_048_576, help="largest request body (default: %(default)s)"
    )
    core.add_argument(
        "--auth-token",
        default=os.environ.get("DUALCALL_AUTH_TOKEN"),
        help="require this bearer token on job routes (default: $DUALCALL_AUTH_TOKEN, else off)",
    )
    sub = parser.add_subparsers(dest="engine", required=True, metavar="{mock,legacy,exllamav2}")
    mock = sub.add_parser("mock", parents=[common], help="deterministic mock engine (for orchestrator authors and CI)")
    mock.add_argument("--token-delay-ms", type=float, default=0.0, help="delay per token (default: %(default)s)")
    mock.add_argument(
        "--fail-after", type=int, default=None, metavar="N", help="simulate an engine failure after N tokens"
    )
    mock.add_argument("--concurrency", type=int, default=16, help="jobs generating at once (default: %(default)s)")
    legacy = sub.add_parser(
        "legacy", parents=[common], help="the legacy direct-SSE worker (negative control; fails conformance)"
    )
    legacy.add_argument("--token-delay-ms", type=float, default=0.0, help="delay per token (default: %(default)s)")
    exl = sub.add_parser("exllamav2", parents=[common], help="ExLlamaV2 engine on CUDA (needs the exllamav2 extra)")
    exl.add_argument("--model", required=True, help="model directory (config.json + safetensors)")
    exl.add_argument("--max-seq-len", type=int, default=2048, help="context length of the cache (default: %(default)s)")
    return parser


def _engine(args: argparse.Namespace) -> Engine:
    if args.engine == "mock":
        from workers.engines.mock import MockEngine

        return MockEngine(
            token_delay_s=args.token_delay_ms / 1000,
            fail_after_tokens=args.fail_after,
            max_concurrency=args.concurrency,
        )
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
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        server.serve(create_legacy_app(args.token_delay_ms / 1000), sock, banner=banner, access_log=args.access_log)
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
    from workers.app import create_app

    app = create_app(engine, settings)
    auth = "on" if settings.auth_token else "off"
    banner = (
        f"dualcall {engine.name} worker ({engine.model}) on {url} — docs {url}/docs, health {url}/health, "
        f"job TTL {settings.job_ttl_s:g}s, auth {auth}. Ctrl-C to stop."
    )
    server.serve(app, sock, banner=banner, access_log=args.access_log)
    return 0


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
