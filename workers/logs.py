"""One log format for the whole worker: uvicorn's access and error lines, Litestar, the core, engines.

``text`` (default) is one timestamped line per record; ``json`` is one JSON object per line.
A record about a job carries its id: handlers and the job's task set :data:`job_id_var`, and
:class:`JobIdFilter` copies it onto every record (``extra={"job_id": ...}`` wins when given).
Nothing here logs request bodies, prompts or generated text: at INFO a job is its id, sizes
and outcome only.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")

#: the job the current task works for (None outside a job)
job_id_var: ContextVar[str | None] = ContextVar("dualcall_job_id", default=None)

#: uvicorn.access passes (client, method, path, http_version, status) as args; json names them
_ACCESS_FIELDS: Final = ("client", "method", "path", "http_version", "status")
#: LogRecord attributes that are not user extras
_STANDARD_ATTRS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "job_id",
    "color_message",  # uvicorn's colourised copy of the message
}


def bind_job(job_id: str) -> None:
    """Mark the rest of the current task as work for ``job_id``."""
    job_id_var.set(job_id)


class JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. 2026-11-27T12:00:00.123Z."""
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-27T12:00:00.123Z INFO  workers.registry job=Xk3... job finished state=completed``."""

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        job = f" job={job_id}" if job_id else ""
        line = f"{_timestamp(record)} {record.levelname:<5} {record.name}{job} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, job_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            entry["job_id"] = job_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            entry.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_config(log_format: LogFormat = "text", *, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict; also uvicorn's ``log_config``, so its loggers share it."""
    formatter = "json" if log_format == "json" else "text"
    routed = {"handlers": ["stderr"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"job_id": {"()": JobIdFilter}},
        "formatters": {"text": {"()": TextFormatter}, "json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": formatter,
                "filters": ["job_id"],
            }
        },
        "loggers": {
            "uvicorn": routed,
            "uvicorn.error": {"level": level},  # propagates to "uvicorn"
            "uvicorn.access": routed,
            "litestar": routed,
        },
        "root": {"handlers": ["stderr"], "level": level},
    }
