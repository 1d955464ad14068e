"""What both command lines share (`conformance.cli` and `conformance.callers.cli`): parser, number type, console."""

from __future__ import annotations

import argparse
import math
import sys

from rich.console import Console

__all__ = ["EXIT_USAGE", "OneLineErrorParser", "positive_number", "report_console"]

EXIT_USAGE = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def report_console() -> Console:
    """The console both CLIs print reports on: outside a terminal (CI logs) lines are never hard-wrapped."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console.soft_wrap = True
        console.width = max(console.width, 120)
    return console


def positive_number(text: str) -> float:
    """A finite number above 0 (``nan`` and ``inf`` are refused, as the worker's own parser refuses them)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value
