"""Strict, I/O-free Server-Sent Events parser for the dualcall conformance suite.

Bytes go in through :meth:`SSEParser.feed`, events come out; nothing here
touches a socket.  Interpretation follows the WHATWG HTML "event stream
interpretation" algorithm exactly, so the events produced are the ones a
browser ``EventSource`` would dispatch.  On top of that the parser records
*framing issues*: every departure from the plainest framing (``name: value``
fields, LF line endings, one ``data`` line per event, UTF-8, no BOM).  Most of
them are valid SSE that the contract allows (SPEC DC-2 "Framing": CR and CRLF
line endings, a leading BOM, unknown fields, a field without a space after its
colon); workers SHOULD use LF.  Only the codes in :data:`CONTRACT_VIOLATIONS`
break a rule (DC-2.3: one line of UTF-8 JSON per event).  Issues are always
collected; ``strict`` only decides whether any issue makes
:attr:`SSEParser.ok` false.

This module deliberately shares no code with any worker's SSE encoder, so an
encoder bug cannot be masked by the same bug in the checker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CONTRACT_VIOLATIONS",
    "ISSUE_CODES",
    "MAX_ISSUES",
    "MAX_ISSUES_PER_CODE",
    "FramingIssue",
    "SSEEvent",
    "SSEParser",
    "parse_stream",
]

_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A
_EOL = re.compile(rb"[\r\n]")
_DIGITS = frozenset("0123456789")
_EXCERPT = 80

#: Total number of :class:`FramingIssue` entries kept in ``SSEParser.issues``.
MAX_ISSUES = 100
#: Entries kept per issue code, so one pervasive problem (e.g. CRLF framing on
#: every line) cannot crowd every other kind of issue out of the list.
#: ``SSEParser.issue_counts`` always holds the uncapped totals.
MAX_ISSUES_PER_CODE = 20

#: Every issue code this parser can record.
ISSUE_CODES = frozenset(
    {
        "cr-line-ending",
        "bom",
        "non-utf8",
        "multi-line-data",
        "unknown-field",
        "id-with-nul",
        "invalid-retry",
        "field-without-space",
        "field-without-colon",
        "trailing-incomplete-event",
    }
)


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event, as a WHATWG ``EventSource`` would deliver it."""

    event: str
    """Event type; ``"message"`` when no (non-empty) ``event`` field was given."""
    data: str
    """Data lines joined with ``"\\n"`` (the final LF removed, per WHATWG)."""
    id: str | None
    """Last-event-id buffer after dispatch (``""`` if reset); ``None`` if never set."""
    retry: int | None
    """Value of the last valid ``retry`` field in this event's block, else ``None``."""
    raw: bytes
    """Exact bytes of the event block, including its terminating blank line."""
    data_lines: int
    """Number of ``data`` fields in this event's block."""
    has_id_field: bool
    """Whether this event's own block contained an ``id`` field (valid or not)."""


#: Issue codes the contract forbids (DC-2.3); every other code is valid SSE.
CONTRACT_VIOLATIONS = frozenset({"non-utf8", "multi-line-data"})


@dataclass(frozen=True, slots=True)
class FramingIssue:
    """A departure from the plainest framing; a broken rule only if its code is in :data:`CONTRACT_VIOLATIONS`."""

    code: str
    """Stable slug, one of :data:`ISSUE_CODES`."""
    message: str
    """One human-readable sentence."""
    offset: int
    """Byte offset in the stream (BOM included) where the problem starts."""
    excerpt: bytes
    """Up to 80 bytes of the stream around ``offset``."""


class SSEParser:
    """Incremental WHATWG event-stream parser with framing diagnostics.

    Any chunking of the input gives identical events, issues and comments,
    including splits inside a CRLF pair or inside a multi-byte UTF-8
    character.  Work per fed byte is amortised constant.
    """

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self.issues: list[FramingIssue] = []
        #: Uncapped number of occurrences per issue code.
        self.issue_counts: dict[str, int] = {}
        self.comments: list[str] = []
        self.last_event_id: str = ""
        self.reconnection_time: int | None = None

        self._closed = False
        self._bom_pending = True
        self._id_ever_set = False
        # Unconsumed input; _buf[0] is at stream offset _base.  _scan is the
        # index in _buf from which to look for the next line terminator
        # (everything before it is known to contain none).
        self._buf = bytearray()
        self._base = 0
        self._scan = 0
        # Interpretation state (WHATWG buffers).
        self._data_parts: list[str] = []
        self._event_type = ""
        # Per-block bookkeeping (reset at every blank line).
        self._block_raw = bytearray()
        self._block_start: int | None = None
        self._block_has_fields = False
        self._block_retry: int | None = None
        self._block_has_id = False

    # ------------------------------------------------------------------ API

    @property
    def ok(self) -> bool:
        """True when no strict issue was recorded (always True if not strict)."""
        return not (self.strict and self.issue_counts)

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Consume ``data`` and return the events completed by it."""
        if self._closed:
            raise RuntimeError("SSEParser.feed() called after close()")
        events: list[SSEEvent] = []
        if not data:
            return events
        self._buf += data
        if self._bom_pending:
            if len(self._buf) < len(_BOM) and _BOM.startswith(self._buf):
                return events  # cannot decide yet
            self._resolve_bom()
        self._drain(events, final=False)
        return events

    def close(self) -> list[SSEEvent]:
        """Signal end of stream.

        A trailing lone CR still ends a line (and may dispatch an event); any
        incomplete trailing event is discarded, as WHATWG requires, and
        recorded as ``trailing-incomplete-event``.
        """
        events: list[SSEEvent] = []
        if self._closed:
            return events
        self._closed = True
        if self._bom_pending:
            self._resolve_bom()
        self._drain(events, final=True)
        pending = bytes(self._buf)
        partial_is_field = bool(pending) and not pending.startswith(b":")
        if self._block_has_fields or partial_is_field:
            start = self._block_start if self._block_start is not None else self._base
            block = bytes(self._block_raw) + pending
            self._issue(
                "trailing-incomplete-event",
                "The stream ended in the middle of an event (no terminating blank "
                "line); the pending event was discarded.",
                start,
                block[:_EXCERPT],
            )
        self._buf.clear()
        self._base += len(pending)
        self._scan = 0
        self._data_parts = []
        self._event_type = ""
        self._reset_block()
        return events

    # ------------------------------------------------------------ internals

    def _issue(self, code: str, message: str, offset: int, excerpt: bytes) -> None:
        count = self.issue_counts.get(code, 0) + 1
        self.issue_counts[code] = count
        if count <= MAX_ISSUES_PER_CODE and len(self.issues) < MAX_ISSUES:
            self.issues.append(FramingIssue(code, message, offset, excerpt))

    def _resolve_bom(self) -> None:
        self._bom_pending = False
        if self._buf.startswith(_BOM):
            self._issue(
                "bom",
                "The stream starts with a UTF-8 byte order mark (stripped).",
                0,
                _BOM,
            )
            del self._buf[: len(_BOM)]
            self._base += len(_BOM)

    def _reset_block(self) -> None:
        self._block_raw = bytearray()
        self._block_start = None
        self._block_has_fields = False
        self._block_retry = None
        self._block_has_id = False

    def _drain(self, events: list[SSEEvent], *, final: bool) -> None:
        buf = self._buf
        size = len(buf)
        pos = 0
        scan = self._scan
        while True:
            m = _EOL.search(buf, scan)
            if m is None:
                scan = size
                break
            i = m.start()
            if buf[i] == _CR:
                if i + 1 == size:
                    if not final:
                        scan = i  # wait: an LF may follow in the next chunk
                        break
                    end = i + 1
                elif buf[i + 1] == _LF:
                    end = i + 2
                else:
                    end = i + 1
            else:
                end = i + 1
            self._line(bytes(buf[pos:end]), i - pos, self._base + pos, events)
            pos = scan = end
        if pos:
            del buf[:pos]
            self._base += pos
            scan -= pos
        self._scan = scan

    def _line(self, raw: bytes, content_len: int, offset: int, events: list[SSEEvent]) -> None:
        """Process one complete line; ``raw`` includes its terminator."""
        if self._block_start is None:
            self._block_start = offset
        self._block_raw += raw
        self._interpret(raw, content_len, offset, events)
        if raw[content_len] == _CR:
            kind = "CRLF" if len(raw) - content_len == 2 else "a lone CR"
            self._issue(
                "cr-line-ending",
                f"Line ends with {kind} (valid SSE; workers SHOULD end lines with LF).",
                offset + content_len,
                _around(raw, content_len),
            )

    def _interpret(self, raw: bytes, content_len: int, offset: int, events: list[SSEEvent]) -> None:
        content = raw[:content_len]
        try:
            line = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._issue(
                "non-utf8",
                "Line is not valid UTF-8; invalid bytes decode to U+FFFD.",
                offset + exc.start,
                _around(raw, exc.start),
            )
            line = content.decode("utf-8", "replace")

        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            text = line[1:]
            self.comments.append(text.removeprefix(" "))
            return

        self._block_has_fields = True
        colon = line.find(":")
        if colon < 0:
            name, value = line, ""
            self._issue(
                "field-without-colon",
                f"Field {name!r} has no colon (valid SSE: a field with an empty value).",
                offset,
                raw[:_EXCERPT],
            )
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value.startswith(" "):
                value = value[1:]
            else:
                self._issue(
                    "field-without-space",
                    f"Field {name!r} has no space after its colon.",
                    offset,
                    raw[:_EXCERPT],
                )

        if name == "data":
            self._data_parts.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            self._block_has_id = True
            if "\x00" in value:
                self._issue(
                    "id-with-nul",
                    "An id field contains U+0000 NULL and was ignored.",
                    offset,
                    raw[:_EXCERPT],
                )
            else:
                self.last_event_id = value
                self._id_ever_set = True
        elif name == "retry":
            retry = _parse_retry(value)
            if retry is None:
                self._issue(
                    "invalid-retry",
                    f"retry value {value!r} is not only ASCII digits and was ignored.",
                    offset,
                    raw[:_EXCERPT],
                )
            else:
                self.reconnection_time = retry
                self._block_retry = retry
        else:
            self._issue(
                "unknown-field",
                f"Unknown field {name!r} was ignored.",
                offset,
                raw[:_EXCERPT],
            )

    def _dispatch(self, events: list[SSEEvent]) -> None:
        raw = bytes(self._block_raw)
        start = self._block_start if self._block_start is not None else self._base
        retry = self._block_retry
        has_id = self._block_has_id
        parts = self._data_parts
        event_type = self._event_type
        self._reset_block()
        self._data_parts = []
        self._event_type = ""
        if not parts:
            return
        if len(parts) > 1:
            self._issue(
                "multi-line-data",
                f"Event has {len(parts)} data lines; the contract allows one (DC-2.3).",
                start,
                raw[:_EXCERPT],
            )
        events.append(
            SSEEvent(
                event=event_type or "message",
                data="\n".join(parts),
                id=self.last_event_id if self._id_ever_set else None,
                retry=retry,
                raw=raw,
                data_lines=len(parts),
                has_id_field=has_id,
            )
        )


def _around(raw: bytes, index: int) -> bytes:
    lo = max(0, index - _EXCERPT // 2)
    return raw[lo : lo + _EXCERPT]


def _parse_retry(value: str) -> int | None:
    if not value or not _DIGITS.issuperset(value):
        return None
    try:
        return int(value)
    except ValueError:  # beyond Python's int/str digit limit
        return None


def parse_stream(data: bytes, *, strict: bool = False) -> tuple[list[SSEEvent], list[FramingIssue]]:
    """Parse a complete stream: feed everything, then close."""
    parser = SSEParser(strict=strict)
    events = parser.feed(data)
    events.extend(parser.close())
    return events, parser.issues
