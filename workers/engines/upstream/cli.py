"""The ``dualcall-worker gateway`` command's options, and the engine they build."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from workers.engines.upstream.apis import API_NAMES, TOP_K_MODES

if TYPE_CHECKING:
    from workers.engines.gateway import GatewayEngine

    # one INFO line per upstream request (the probe's every second) would drown the access log
    logging.getLogger("httpx").setLevel(logging.WARNING)
#: read when --upstream-token is not given
UPSTREAM_TOKEN_ENV = "DUALCALL_UPSTREAM_TOKEN"


def _upstream_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"must be an http:// or https:// URL such as http://127.0.0.1:8000, got {text!r}"
        )
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"must be a base URL without ?query or #fragment, got {text!r}")
    return text.rstrip("/")


def add_gateway_parser(
    sub: Any,
    parents: list[argparse.ArgumentParser],
    *,
    positive_float: Callable[[str], float],
    positive_int: Callable[[str], int],
) -> None:
    """Register ``gateway`` on the worker CLI's subparsers (the number types are the CLI's own)."""
    gateway = sub.add_parser(
        "gateway",
        parents=parents,
        help="serve the contract in front of an OpenAI-compatible or legacy direct-SSE server (docs/gateway.md)",
    )
    up = gateway.add_argument_group("upstream")
    up.add_argument(
        "--upstream", required=True, type=_upstream_url, metavar="URL", help="base URL of the server (http://host:port)"
    )
    up.add_argument(
        "--upstream-api",
        choices=API_NAMES,
        default="openai-chat",
        help="how to talk to it: /v1/chat/completions, /v1/completions, or the legacy direct-SSE POST "
        "(default: %(default)s)",
    )
    up.add_argument(
        "--upstream-model",
        default=None,
        metavar="ID",
        help="model name sent upstream (default: the first id of the upstream's /v1/models)",
    )
    up.add_argument(
        "--upstream-token",
        default=None,
        metavar="TOKEN",
        help=f"bearer token for the upstream (default: ${UPSTREAM_TOKEN_ENV}, else none)",
    )
    up.add_argument(
        "--upstream-timeout-s",
        type=positive_float,
        default=60.0,
        metavar="S",
        help="seconds the upstream may stay silent (connect, first byte, between events) before the job "
        "fails (default: %(default)s)",
    )
    up.add_argument(
        "--upstream-concurrency",
        type=positive_int,
        default=16,
        metavar="N",
        help="jobs streaming from the upstream at once; the rest wait in the queue (default: %(default)s)",
    )
    up.add_argument(
        "--upstream-top-k",
        choices=TOP_K_MODES,
        default=None,
        help="top_k: pass it, drop it, or auto (pass it until the upstream refuses it once, then drop it); "
        "default: auto for the OpenAI APIs, drop for legacy",
    )


def gateway_engine(args: argparse.Namespace) -> GatewayEngine:
    """The `GatewayEngine` the parsed options describe."""
    from workers.engines.gateway import GatewayEngine

    # one INFO line per upstream request (the probe's every second) would drown the access log
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return GatewayEngine(
        args.upstream,
        args.upstream_api,
        model=args.upstream_model,
        token=args.upstream_token or os.environ.get(UPSTREAM_TOKEN_ENV) or None,
        timeout_s=args.upstream_timeout_s,
        concurrency=args.upstream_concurrency,
        top_k=args.upstream_top_k,
    )
