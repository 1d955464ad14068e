"""workers.logs: one format for every logger, the job id from the task's context, JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import re
from collections.abc import Iterator

import pytest

from workers.logs import JsonFormatter, bind_job, job_id_var, log_config

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Route the config's handler into a buffer; restore the loggers the config touches."""
    buffer = io.StringIO()
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "litestar")
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    yield buffer
    for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def configure(log_format: str, buffer: io.StringIO) -> None:
    config = log_config(log_format)  # type: ignore[arg-type]
    logging.config.dictConfig(config)
    for handler in logging.getLogger().handlers:
        handler.setStream(buffer)  # type: ignore[attr-defined]


def test_text_lines_carry_timestamp_level_logger_and_the_task_job_id(stream: io.StringIO) -> None:
    configure("text", stream)

    async def job_task() -> None:
        bind_job("job-abc")
        logging.getLogger("workers.engines.mock").warning("engine hiccup %d", 7)

    async def main() -> None:
        await asyncio.create_task(job_task())
        logging.getLogger("uvicorn.error").info("not about a job")  # the task's binding did not leak

    asyncio.run(main())
    first, second = stream.getvalue().splitlines()
    assert re.fullmatch(TIMESTAMP + r" WARNING workers\.engines\.mock job=job-abc engine hiccup 7", first), first
    assert re.fullmatch(TIMESTAMP + r" INFO  uvicorn\.error not about a job", second), second
    assert job_id_var.get() is None


def test_explicit_job_id_wins_over_the_context(stream: io.StringIO) -> None:
    configure("text", stream)
    token = job_id_var.set("from-context")
    try:
        logging.getLogger("workers.registry").info("reclaimed", extra={"job_id": "explicit"})
    finally:
        job_id_var.reset(token)
    assert " job=explicit reclaimed" in stream.getvalue()


def test_json_lines_name_access_fields_extras_and_exceptions(stream: io.StringIO) -> None:
    configure("json", stream)
    token = job_id_var.set("job-xyz")
    try:
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/inference/job-xyz/stream", "1.1", 200
        )
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("workers.registry").exception("engine failed", extra={"tokens_out": 3})
    finally:
        job_id_var.reset(token)
    access, failure = (json.loads(line) for line in stream.getvalue().splitlines())
    assert re.fullmatch(TIMESTAMP, access["ts"])
    assert access["logger"] == "uvicorn.access"
    assert access["job_id"] == "job-xyz"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/v1/inference/job-xyz/stream", 200)
    assert access["message"] == '127.0.0.1:5000 - "GET /v1/inference/job-xyz/stream HTTP/1.1" 200'
    assert failure["level"] == "ERROR"
    assert failure["tokens_out"] == 3
    assert "RuntimeError: boom" in failure["exc"]


def test_json_formatter_survives_values_json_cannot_encode() -> None:
    record = logging.LogRecord("workers", logging.INFO, __file__, 1, "odd extra", None, None)
    record.payload = object()
    assert json.loads(JsonFormatter().format(record))["payload"].startswith("<object object")
