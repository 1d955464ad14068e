"""``python -m conformance URL``."""

from conformance.cli import main

raise SystemExit(main())
