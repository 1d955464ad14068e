"""Serve the mock worker with one defect from the catalogue injected.

    python tests/broken_workers/serve.py DEFECT [--port 0] [--ttl-s 2] [worker flags]
    python tests/broken_workers/serve.py none          # the unmodified mock, same settings
    python tests/broken_workers/serve.py --list

The defect is built through the app's seams (`workers.seams.Seams`, passed to `create_app`) and,
for engine defects, a wrapper around the mock engine. Prints a banner with ``on http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broken_workers.defects import DEFECTS, VARIANTS, Broken

#: the name that serves the unmodified worker through the same code path
BASELINE = "none"


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
    broken = Broken() if args.defect == BASELINE else catalogue[args.defect].apply()

    from workers import server
    from workers.__main__ import settings_from_args
    from workers.app import create_app
    from workers.engines.mock import MockEngine

    settings = settings_from_args(args)
    mock = MockEngine(token_delay_s=args.token_delay_ms / 1000, max_concurrency=args.concurrency)
    engine = mock if broken.engine is None else broken.engine(mock)
    app = create_app(engine, settings, broken.seams)
    sock = server.bind(args.host, args.port)
    url = server.base_url(sock)
    banner = f"dualcall BROKEN mock worker (defect: {args.defect}) on {url} — job TTL {settings.job_ttl_s:g}s"
    server.serve(app, sock, banner=banner, access_log=args.access_log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
