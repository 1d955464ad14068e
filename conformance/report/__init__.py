"""Report renderers: JSON, JUnit XML, HTML and the rich console, all views of one :class:`~conformance.model.Report`."""

from __future__ import annotations

from conformance.report.console import ConsoleProgress, render_console
from conformance.report.html import write_html
from conformance.report.json_report import SCHEMA_PATH, write_json
from conformance.report.junit import write_junit

__all__ = ["SCHEMA_PATH", "ConsoleProgress", "render_console", "write_html", "write_json", "write_junit"]
