"""Serve the mock worker with one defect from the catalogue injected.

    python tests/broken_workers/serve.py DEFECT [--port 0] [--ttl-s 2] [worker flags]
    python tests/broken_workers/serve.py none          # the unmodified mock, same settings
    python tests/broken_workers/serve.py --list

The defect is applied in THIS process (monkeypatches) before the app is built, and its
middleware, if any, wraps the real app. Prints a banner with ``on http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broken_workers.defects import DEFECTS, VARIANTS

#: the name that serves the unmodified worker through the same code path
BASELINE = "none"


class _Wrapped:
    """The middleware-wrapped ASGI app, keeping the Litestar app's ``state`` for `workers.server`."""

    def __init__(self, asgi: Any, app: Any) -> None:
        self._asgi = asgi
        self.state = app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._asgi(scope, receive, send)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("defect", nargs="?", help=f"defect name, or {BASELINE!r} for the unmodified mock")
    parser.add_argument("--list", action="store_true", help="list the catalogue and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttl-s", type=float, default=2.0)
    parser.add_argument("--queue-limit", type=int, default=64)
    parser.add_argument("--keepalive-s", type=float, default=15.0)
    parser.add_argument("--max-tokens-cap", type=int, default=4096)
    parser.add_argument("--max-body-bytes", type=int, default=1_048_576)
    parser.add_argument("--auth-token", default=None)
    parser.add_argument("--token-delay-ms", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--access-log", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, entry in DEFECTS.items():
            print(f"{name:28} {', '.join(entry.caught_by + entry.warned_by):40} {entry.description}")
        return 0
    if args.defect is None:
        parser.error("name a defect (or --list)")
    catalogue = {**DEFECTS, **VARIANTS}
    if args.defect != BASELINE and args.defect not in catalogue:
        parser.error(f"unknown defect {args.defect!r}; see --list")
    middleware = None if args.defect == BASELINE else catalogue[args.defect].apply()

    from workers import server
    from workers.__main__ import settings_from_args
    from workers.app import create_app
    from workers.engines.mock import MockEngine

    settings = settings_from_args(args)
    engine = MockEngine(token_delay_s=args.token_delay_ms / 1000, max_concurrency=args.concurrency)
    app = create_app(engine, settings)
    asgi: Any = app if middleware is None else _Wrapped(middleware(app), app)
    sock = server.bind(args.host, args.port)
    url = server.base_url(sock)
    banner = f"dualcall BROKEN mock worker (defect: {args.defect}) on {url} — job TTL {settings.job_ttl_s:g}s"
    server.serve(asgi, sock, banner=banner, access_log=args.access_log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
