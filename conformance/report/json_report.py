"""The JSON report: ``Report.to_dict()`` written as pretty UTF-8 JSON.

Its shape is described by ``report.schema.json`` (JSON Schema draft 2020-12) next to this
module; see :data:`SCHEMA_PATH` and :func:`load_schema`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conformance.model import Report
from conformance.report.text import masked_headers

__all__ = ["SCHEMA_PATH", "load_schema", "report_dict", "to_json", "write_json"]

#: JSON Schema (draft 2020-12) of the document :func:`write_json` writes.
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def load_schema() -> dict[str, Any]:
    """The report's JSON Schema, parsed."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def report_dict(report: Report) -> dict[str, Any]:
    """``report.to_dict()`` with credentials in recorded request headers masked."""
    data: dict[str, Any] = report.to_dict()
    for check in data["checks"]:
        for exchange in check["evidence"]["exchanges"]:
            request = exchange["request"]
            request["headers"] = masked_headers(request["headers"])
    return data


def to_json(report: Report) -> str:
    """The report as pretty JSON text (key order as ``to_dict`` gives it, non-ASCII kept)."""
    return json.dumps(report_dict(report), indent=2, ensure_ascii=False) + "\n"


def write_json(report: Report, path: str | Path) -> Path:
    """Write the JSON report to *path* (parent directories are created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # errors="surrogatepass" would write invalid UTF-8; a lone surrogate is replaced instead.
    target.write_bytes(to_json(report).encode("utf-8", errors="replace"))
    return target
