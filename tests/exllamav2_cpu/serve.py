"""``python -m tests.exllamav2_cpu.serve exllamav2 --model DIR ...``: the real worker CLI, with the
CPU stand-ins of `tests.exllamav2_cpu.standins` installed first (for tests and the benchmark)."""

from __future__ import annotations

import sys

from tests.exllamav2_cpu import standins

if __name__ == "__main__":
    standins.install()
    from workers.__main__ import main

    raise SystemExit(main(sys.argv[1:]))
