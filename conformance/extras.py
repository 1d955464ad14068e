"""Which optional dependencies the gate needs, and the one-line message when they are missing.

``pip install dualcall`` installs what a worker and the reference client need; running the
checks (schemathesis fuzzing, JSON Schema validation) needs ``pip install 'dualcall[conformance]'``.
"""

from __future__ import annotations

import importlib.util
from typing import Final

CONFORMANCE_EXTRA: Final = "dualcall[conformance]"
#: import names the checks load lazily; hypothesis arrives with schemathesis
CONFORMANCE_MODULES: Final = ("schemathesis", "hypothesis", "jsonschema")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # an import hook that refuses it, or a half-removed module
        return False


def missing_conformance_modules() -> list[str]:
    return [name for name in CONFORMANCE_MODULES if not _importable(name)]


def missing_extra_message() -> str | None:
    """None when the checks can run, else one line naming what is missing and what to install."""
    missing = missing_conformance_modules()
    if not missing:
        return None
    return (
        f"the conformance checks need {', '.join(missing)}, which `pip install dualcall` does not install: "
        f"pip install '{CONFORMANCE_EXTRA}'"
    )
