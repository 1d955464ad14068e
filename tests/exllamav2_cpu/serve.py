"""``python tests/exllamav2_cpu/serve.py exllamav2 --model DIR ...``: the real worker CLI, with the
CPU stand-ins of ``standins.py`` installed first (for the tests and scripts/bridge_bench.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exllamav2_cpu import standins

if __name__ == "__main__":
    standins.install()
    from workers.__main__ import main

    raise SystemExit(main(sys.argv[1:]))
