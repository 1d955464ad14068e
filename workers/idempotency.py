"""``Idempotency-Key`` on submit (contract DC-1.9 to DC-1.12): the header's syntax and the body's fingerprint.

The registries store ``key -> (job id, fingerprint)`` for the job TTL (`workers.registry`); this
module only says what a well-formed key is and when two bodies are the same request.
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

from workers.registry.api import Idempotency

HEADER: Final = "Idempotency-Key"
MAX_KEY_CHARS: Final = 255
#: visible ASCII (RFC 5234 VCHAR): no space, no control character, nothing beyond 0x7E
_VISIBLE: Final = frozenset(chr(code) for code in range(0x21, 0x7F))


class MalformedKey(ValueError):
    """The header's value is not a key DC-1.12 accepts; the message says why."""


def parse_key(value: str) -> str:
    """The key of an ``Idempotency-Key`` value, bare or a structured-field string (``"k"``)."""
    key = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if not key:
        raise MalformedKey("Idempotency-Key is empty")
    if len(key) > MAX_KEY_CHARS:
        raise MalformedKey(f"Idempotency-Key is {len(key)} characters long; at most {MAX_KEY_CHARS} are allowed")
    if not set(key) <= _VISIBLE:
        raise MalformedKey("Idempotency-Key may hold only visible ASCII characters (no spaces)")
    return key


def fingerprint(body: bytes) -> str:
    """Equal for bodies that are equal as JSON values (member order and whitespace do not count).

    ``body`` has been decoded once already (it is valid JSON); sorting the members of every object
    makes one canonical encoding.
    """
    canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    return hashlib.sha256(canonical).hexdigest()


def from_header(value: str | None, body: bytes) -> Idempotency | None:
    """The submit's `Idempotency`, or None without the header; raises `MalformedKey`."""
    if value is None:
        return None
    return Idempotency(key=parse_key(value), fingerprint=fingerprint(body))
