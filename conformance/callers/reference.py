"""The reference client (:mod:`conformance.client`) as a caller under test.

``python -m conformance.callers.reference BASE_URL PROMPT`` prints the completion (exit 0) or
the failure on stderr (exit 1); :func:`sync_caller` and :func:`async_caller` are the same as
functions for :class:`~conformance.callers.drive.FunctionCaller` and the pytest fixture.
"""

from __future__ import annotations

import asyncio
import sys

from conformance.callers.record import CallerTarget
from conformance.client import AsyncDualCallClient, DualCallClient, DualCallError

TIMEOUT_S = 15.0


def sync_caller(target: CallerTarget) -> str:
    """The README's example as a caller: ``generate()`` raises GenerationFailed on an ``error`` event."""
    with DualCallClient(target.base_url, timeout=TIMEOUT_S) as client:
        return client.generate(target.prompt, max_tokens=32).text


def async_caller(target: CallerTarget) -> str:
    async def generate() -> str:
        async with AsyncDualCallClient(target.base_url, timeout=TIMEOUT_S) as client:
            return (await client.generate(target.prompt, max_tokens=32)).text

    return asyncio.run(generate())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m conformance.callers.reference BASE_URL PROMPT", file=sys.stderr)
        return 2
    base_url, prompt = args
    try:
        text = sync_caller(CallerTarget("", base_url, base_url + "/v1/inference", prompt))
    except DualCallError as exc:
        print(f"reference caller: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
