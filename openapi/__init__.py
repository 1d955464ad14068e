"""The dualcall worker contract: the OpenAPI 3.2 document and the prose spec.

This directory ships as a package so that an installed wheel carries the contract::

    from openapi import load_document, contract_version
"""

from __future__ import annotations

import functools
import pathlib
from importlib.resources import files
from typing import Any

__all__ = ["DOCUMENT_PATH", "SPEC_PATH", "contract_version", "load_document"]

_PACKAGE_DIR = pathlib.Path(str(files(__name__)))

DOCUMENT_PATH: pathlib.Path = _PACKAGE_DIR / "dualcall.yaml"
"""Path of the OpenAPI 3.2 document."""

SPEC_PATH: pathlib.Path = _PACKAGE_DIR / "SPEC.md"
"""Path of the prose spec with the numbered DC-x.y rules."""


@functools.cache
def load_document() -> dict[str, Any]:
    """Return the parsed OpenAPI document (cached; do not mutate the result)."""
    import yaml

    with DOCUMENT_PATH.open(encoding="utf-8") as stream:
        document = yaml.safe_load(stream)
    if not isinstance(document, dict):
        msg = f"{DOCUMENT_PATH} does not hold a YAML mapping"
        raise TypeError(msg)
    return document


def contract_version() -> str:
    """Return the contract version, the document's ``info.version`` (e.g. ``"1.0.0"``)."""
    info = load_document()["info"]
    version = info["version"]
    if not isinstance(version, str):
        msg = f"info.version in {DOCUMENT_PATH} must be a string, got {version!r}"
        raise TypeError(msg)
    return version
