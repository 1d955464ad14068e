"""The submit body: decoded and validated (problem+json on bad input), then mapped to a `GenerationRequest`.

The defaults of `workers.seams.Seams.decode_request` and ``Seams.to_generation``.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from workers.config import WorkerSettings
from workers.engines.base import GenerationRequest
from workers.problems import FieldError, ProblemException
from workers.schemas import InferenceRequest

_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")
_FIELD_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


#: fields typed `integer` in the contract; JSON Schema counts 5.0 as an integer, msgspec does not
_INTEGER_FIELDS: Final = ("max_tokens", "top_k", "seed")


def decode_request(body: bytes) -> InferenceRequest:
    """The request body as the contract's `InferenceRequest`; raises a 400/422 `ProblemException`."""
    try:
        raw = msgspec.json.decode(body)
        if isinstance(raw, dict):
            for name in _INTEGER_FIELDS:
                value = raw.get(name)
                if isinstance(value, float) and value.is_integer():
                    raw[name] = int(value)
        return msgspec.convert(raw, type=InferenceRequest)
    except msgspec.ValidationError as exc:
        message = str(exc)
        unknown = _UNKNOWN_FIELD.search(message)
        if unknown and unknown.group(1) == "job_id":
            raise ProblemException(
                422,
                "client-job-id",
                "The server assigns job ids: remove `job_id` from the request body and read `job_id` "
                "and `sse_url` from the 202 response (dual-call contract, DC-1.4).",
                errors=[FieldError(field="job_id", message="not allowed: the server assigns job ids")],
            ) from None
        if unknown:
            raise ProblemException(
                422,
                "unknown-field",
                f"Unknown field `{unknown.group(1)}` in the request body.",
                errors=[FieldError(field=unknown.group(1), message="unknown field")],
            ) from None
        where = _FIELD_PATH.search(message)
        field = where.group(1) if where else ""
        raise ProblemException(
            422,
            "invalid-field",
            f"Invalid request body: {message}.",
            errors=[FieldError(field=field, message=_FIELD_PATH.sub("", message))],
        ) from None
    except msgspec.DecodeError as exc:
        raise ProblemException(400, "malformed-json", f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        # msgspec's decoder has a depth limit (the interpreter's recursion limit, ~1000 levels): a
        # hostile `[[[[...` stops there at C speed, with no pre-scan that every body would pay for
        raise ProblemException(
            400, "json-too-deep", "The request body nests JSON too deeply to decode; requests are flat objects."
        ) from None
    except UnicodeDecodeError as exc:  # msgspec raises it, not DecodeError, for invalid UTF-8 inside a string
        raise ProblemException(
            400, "malformed-json", f"The request body is not valid UTF-8 JSON: bad byte at offset {exc.start}."
        ) from None


def to_generation(body: InferenceRequest, settings: WorkerSettings) -> GenerationRequest:
    """The engine's view of a request: the worker's default and cap applied to ``max_tokens``."""
    requested = settings.default_max_tokens if body.max_tokens is msgspec.UNSET else body.max_tokens
    return GenerationRequest(
        prompt=body.prompt,
        max_tokens=min(requested, settings.max_tokens_cap),
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=None if body.seed is msgspec.UNSET else body.seed,
        stop=tuple(body.stop),
    )
