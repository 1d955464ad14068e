"""Tests for the conformance suite's own WHATWG SSE parser."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.sse import (
    ISSUE_CODES,
    MAX_ISSUES,
    FramingIssue,
    SSEEvent,
    SSEParser,
    parse_stream,
)

# --------------------------------------------------------------- helpers


def events_of(data: bytes) -> list[SSEEvent]:
    events, _ = parse_stream(data)
    return events


def simple(data: bytes) -> list[tuple[str, str, str | None]]:
    return [(e.event, e.data, e.id) for e in events_of(data)]


def codes(data: bytes) -> list[str]:
    _, issues = parse_stream(data, strict=True)
    return [i.code for i in issues]


def feed_chunks(chunks: list[bytes], *, strict: bool = False) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser(strict=strict)
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    out.extend(parser.close())
    return out, parser


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    chunks, prev = [], 0
    for p in points:
        chunks.append(data[prev:p])
        prev = p
    chunks.append(data[prev:])
    return chunks


def snapshot(chunks: list[bytes]) -> object:
    events, parser = feed_chunks(chunks, strict=True)
    return (
        events,
        parser.issues,
        parser.issue_counts,
        parser.comments,
        parser.last_event_id,
        parser.reconnection_time,
    )


def reference(data: bytes) -> list[tuple[str, str, str]]:
    """Deliberately naive, whole-buffer transcription of the WHATWG algorithm."""
    text = data.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", text)[:-1]  # last piece is unterminated
    out: list[tuple[str, str, str]] = []
    data_buf, type_buf, last_id = "", "", ""
    for line in lines:
        if line == "":
            if data_buf == "":
                type_buf = ""
                continue
            data_buf = data_buf.removesuffix("\n")
            out.append((type_buf or "message", data_buf, last_id))
            data_buf, type_buf = "", ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            value = value.removeprefix(" ")
        else:
            name, value = line, ""
        if name == "event":
            type_buf = value
        elif name == "data":
            data_buf += value + "\n"
        elif name == "id" and "\x00" not in value:
            last_id = value
    return out


# ----------------------------------------------------------- line endings


@pytest.mark.parametrize(
    "stream",
    [
        b"data: a\n\ndata: b\n\n",
        b"data: a\r\rdata: b\r\r",
        b"data: a\r\n\r\ndata: b\r\n\r\n",
        b"data: a\r\n\rdata: b\n\r\n",
        b"data: a\n\r\ndata: b\r\r",
    ],
    ids=["lf", "cr", "crlf", "mixed1", "mixed2"],
)
def test_line_endings(stream: bytes) -> None:
    assert simple(stream) == [("message", "a", None), ("message", "b", None)]


def test_cr_then_lf_in_separate_lines_is_one_terminator() -> None:
    # "\r\n" is a single terminator, so this is one data line, not a blank line.
    assert simple(b"data: a\r\ndata: b\r\n\r\n") == [("message", "a\nb", None)]
    # "\n\r" is two terminators: the LF ends the data line, the CR is blank.
    assert simple(b"data: a\n\rdata: b\n\n") == [
        ("message", "a", None),
        ("message", "b", None),
    ]


def test_crlf_split_across_feeds() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == []
    got = parser.feed(b"\ndata: b\r\n\r\n")
    assert [e.data for e in got] == ["a", "b"]
    assert parser.close() == []
    assert got[0].raw == b"data: a\r\n\r\n"


def test_cr_at_chunk_end_followed_by_non_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    got = parser.feed(b"\rdata: b")
    assert [e.data for e in got] == ["a"]
    assert got[0].raw == b"data: a\r\r"


def test_trailing_lone_cr_at_close_ends_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\r") == []
    got = parser.close()
    assert [e.data for e in got] == ["a"]
    assert got[0].raw == b"data: a\n\r"


def test_trailing_lone_cr_issue_recorded() -> None:
    assert codes(b"data: a\n\r") == ["cr-line-ending"]


# ----------------------------------------------------------------- BOM


def test_bom_stripped_once() -> None:
    assert simple(b"\xef\xbb\xbfdata: a\n\n") == [("message", "a", None)]


def test_second_bom_is_not_stripped() -> None:
    # The second BOM becomes part of the field name, so the field is unknown.
    stream = b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n"
    assert simple(stream) == [("message", "b", None)]
    assert codes(stream) == ["bom", "unknown-field"]


def test_bom_inside_value_is_data() -> None:
    assert simple(b"\xef\xbb\xbfdata: \xef\xbb\xbfx\n\n") == [("message", "\ufeffx", None)]


def test_bom_not_at_stream_start_is_not_stripped() -> None:
    assert simple(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [("message", "a", None)]


def test_bom_split_across_feeds() -> None:
    events, parser = feed_chunks([b"\xef", b"\xbb", b"\xbf", b"data: a\n\n"])
    assert [e.data for e in events] == ["a"]
    assert [i.code for i in parser.issues] == ["bom"]
    assert parser.issues[0].offset == 0


def test_partial_bom_at_close_is_not_a_bom() -> None:
    events, parser = feed_chunks([b"\xef\xbb"])
    assert events == []
    assert "bom" not in parser.issue_counts


# ------------------------------------------------------------- comments


def test_comments_are_ignored_and_recorded() -> None:
    parser = SSEParser()
    got = parser.feed(b": keep-alive\n:no-space\n:\ndata: a\n\n")
    got += parser.close()
    assert [(e.data, e.raw) for e in got] == [("a", b": keep-alive\n:no-space\n:\ndata: a\n\n")]
    assert parser.comments == ["keep-alive", "no-space", ""]
    assert parser.issues == []


def test_comment_only_block_dispatches_nothing() -> None:
    assert events_of(b": ping\n\n: ping\n\n") == []
    assert codes(b": ping\n\n: pi") == []  # trailing partial comment is not an event


# ------------------------------------------------------ field/value split


def test_data_without_colon_is_empty_data_line() -> None:
    assert simple(b"data\n\n") == [("message", "", None)]
    assert simple(b"data\ndata\n\n") == [("message", "\n", None)]


def test_one_leading_space_removed_only() -> None:
    assert simple(b"data:x\n\n") == [("message", "x", None)]
    assert simple(b"data: x\n\n") == [("message", "x", None)]
    assert simple(b"data:  x\n\n") == [("message", " x", None)]
    assert simple(b"data: x \n\n") == [("message", "x ", None)]
    assert simple(b"data:\tx\n\n") == [("message", "\tx", None)]


def test_empty_data_variants_dispatch_empty_string() -> None:
    assert simple(b"data:\n\n") == [("message", "", None)]
    assert simple(b"data: \n\n") == [("message", "", None)]


def test_value_may_contain_colons() -> None:
    assert simple(b"data: a: b:c\n\n") == [("message", "a: b:c", None)]


def test_field_names_are_case_sensitive() -> None:
    stream = b"Data: a\nDATA: b\n\n"
    assert events_of(stream) == []
    assert codes(stream) == ["unknown-field", "unknown-field"]


def test_multi_line_data_joined_with_lf() -> None:
    (ev,) = events_of(b"data: a\ndata: b\ndata: c\n\n")
    assert ev.data == "a\nb\nc"
    assert ev.data_lines == 3


def test_only_one_trailing_lf_removed() -> None:
    (ev,) = events_of(b"data: a\ndata:\n\n")
    assert ev.data == "a\n"


def test_done_sentinel_and_json() -> None:
    stream = b'data: {"text":"a\\nb"}\n\ndata: [DONE]\n\n'
    evs = events_of(stream)
    assert [e.data for e in evs] == ['{"text":"a\\nb"}', "[DONE]"]
    assert all(e.data_lines == 1 for e in evs)
    assert codes(stream) == []


# ----------------------------------------------------------- event type


def test_event_type() -> None:
    assert simple(b"event: delta\ndata: a\n\ndata: b\n\n") == [
        ("delta", "a", None),
        ("message", "b", None),
    ]


def test_empty_event_type_is_message() -> None:
    assert simple(b"event:\ndata: a\n\n") == [("message", "a", None)]


def test_event_without_data_is_not_dispatched_and_type_reset() -> None:
    assert simple(b"event: done\n\ndata: a\n\n") == [("message", "a", None)]


def test_last_event_field_wins() -> None:
    assert simple(b"event: a\nevent: b\ndata: x\n\n") == [("b", "x", None)]


# -------------------------------------------------------------------- id


def test_id_persists_and_resets() -> None:
    stream = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid\ndata: d\n\ndata: e\n\n"
    evs = events_of(stream)
    assert [(e.data, e.id, e.has_id_field) for e in evs] == [
        ("a", "1", True),
        ("b", "1", False),
        ("c", "2", True),
        ("d", "", True),
        ("e", "", False),
    ]


def test_id_without_any_id_field_is_none() -> None:
    assert [e.id for e in events_of(b"data: a\n\ndata: b\n\n")] == [None, None]


def test_id_alone_updates_last_event_id_without_dispatch() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 7\n\n") == []
    assert parser.last_event_id == "7"
    (ev,) = parser.feed(b"data: a\n\n")
    assert ev.id == "7"
    assert ev.has_id_field is False


def test_id_with_nul_is_ignored() -> None:
    stream = b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"
    evs = events_of(stream)
    assert [(e.id, e.has_id_field) for e in evs] == [("1", True), ("1", True)]
    assert codes(stream) == ["id-with-nul"]


def test_id_with_nul_only_never_sets_id() -> None:
    assert [e.id for e in events_of(b"id: \x00\ndata: a\n\n")] == [None]


def test_id_with_empty_value_via_colon() -> None:
    assert [e.id for e in events_of(b"id: 1\n\nid:\ndata: a\n\n")] == [""]


# ----------------------------------------------------------------- retry


def test_retry_valid() -> None:
    parser = SSEParser()
    evs = parser.feed(b"retry: 1500\ndata: a\n\ndata: b\n\n")
    assert [e.retry for e in evs] == [1500, None]
    assert parser.reconnection_time == 1500


@pytest.mark.parametrize("value", [b"1a", b" 10", b"-1", b"1.5", b"", b"\xd9\xa3"])
def test_retry_invalid_ignored(value: bytes) -> None:
    parser = SSEParser()
    parser.feed(b"retry: 100\n\nretry: " + value + b"\ndata: a\n\n")
    parser.close()
    assert parser.reconnection_time == 100
    assert "invalid-retry" in parser.issue_counts


def test_retry_without_data_still_sets_reconnection_time() -> None:
    parser = SSEParser()
    assert parser.feed(b"retry: 5\n\n") == []
    assert parser.reconnection_time == 5


# -------------------------------------------------------- unknown fields


def test_unknown_field_ignored() -> None:
    stream = b"foo: bar\ndata: a\n\n"
    assert simple(stream) == [("message", "a", None)]
    assert codes(stream) == ["unknown-field"]


# --------------------------------------------------------------- close()


def test_trailing_event_without_blank_line_discarded() -> None:
    parser = SSEParser(strict=True)
    assert parser.feed(b"data: a\n\ndata: b\n") == [SSEEvent("message", "a", None, None, b"data: a\n\n", 1, False)]
    assert parser.close() == []
    assert [i.code for i in parser.issues] == ["trailing-incomplete-event"]
    assert parser.issues[0].offset == 9
    assert parser.issues[0].excerpt == b"data: b\n"
    assert not parser.ok


def test_trailing_unterminated_line_discarded() -> None:
    events, issues = parse_stream(b"data: a\n\ndata: b")
    assert [e.data for e in events] == ["a"]
    assert [(i.code, i.offset) for i in issues] == [("trailing-incomplete-event", 9)]


def test_trailing_unterminated_id_not_applied() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\n\nid: 9")
    parser.close()
    assert parser.last_event_id == ""


def test_clean_end_has_no_issue() -> None:
    assert codes(b"data: a\n\n") == []
    assert codes(b"") == []
    assert codes(b"data: a\n\n\n\n") == []


def test_feed_after_close_raises() -> None:
    parser = SSEParser()
    parser.close()
    assert parser.close() == []
    with pytest.raises(RuntimeError):
        parser.feed(b"data: a\n\n")


def test_empty_feed_is_noop() -> None:
    parser = SSEParser()
    assert parser.feed(b"") == []
    assert parser.feed(b"data: a\n\n")[0].data == "a"


# ------------------------------------------------------------------ UTF-8

CJK_EMOJI = "data: 漢字かな 🦀🎉 ok\n\nevent: ü\ndata: é\n\n".encode()


def test_multibyte_utf8() -> None:
    assert simple(CJK_EMOJI) == [
        ("message", "漢字かな 🦀🎉 ok", None),
        ("ü", "é", None),
    ]


def test_multibyte_utf8_split_at_every_byte_boundary() -> None:
    whole = snapshot([CJK_EMOJI])
    for i in range(len(CJK_EMOJI) + 1):
        assert snapshot([CJK_EMOJI[:i], CJK_EMOJI[i:]]) == whole, i


def test_multibyte_utf8_byte_at_a_time() -> None:
    stream = b"\xef\xbb\xbf" + CJK_EMOJI + b"data: x\r\n\r\n"
    assert snapshot([bytes([b]) for b in stream]) == snapshot([stream])


def test_invalid_utf8_replaced() -> None:
    stream = b"data: a\xffb\xe6\xbc\n\ndata: \xf0\x9f\n\n"
    assert simple(stream) == [
        ("message", "a\ufffdb\ufffd", None),
        ("message", "\ufffd", None),
    ]
    _, issues = parse_stream(stream, strict=True)
    assert [(i.code, i.offset) for i in issues] == [
        ("non-utf8", 7),
        ("non-utf8", 19),
    ]


# ------------------------------------------------------------------- raw


def test_raw_is_exact_event_block() -> None:
    stream = b": hello\n\nevent: a\nid: 1\ndata: x\n\nevent: ignored\n\ndata: y\r\n\r\n\n\nretry: 3\ndata: z\n\n"
    evs = events_of(stream)
    assert [e.raw for e in evs] == [
        b"event: a\nid: 1\ndata: x\n\n",
        b"data: y\r\n\r\n",
        b"retry: 3\ndata: z\n\n",
    ]
    assert [e.retry for e in evs] == [None, None, 3]
    for e in evs:
        assert e.raw in stream


# ----------------------------------------------------------- strict issues


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: a\r\n\r\n", ["cr-line-ending", "cr-line-ending"]),
        (b"data: a\r\r", ["cr-line-ending", "cr-line-ending"]),
        (b"\xef\xbb\xbfdata: a\n\n", ["bom"]),
        (b"data: \xff\n\n", ["non-utf8"]),
        (b"data: a\ndata: b\n\n", ["multi-line-data"]),
        (b"x-foo: 1\ndata: a\n\n", ["unknown-field"]),
        (b"id: a\x00\ndata: a\n\n", ["id-with-nul"]),
        (b"retry: soon\ndata: a\n\n", ["invalid-retry"]),
        (b"data:a\n\n", ["field-without-space"]),
        (b"data\n\n", ["field-without-colon"]),
        (b"data: a\n", ["trailing-incomplete-event"]),
        (b"data: a\n\nevent: x\n", ["trailing-incomplete-event"]),
        (b'event: delta\nid: 3\nretry: 10\ndata: {"t":"x"}\n\n: ka\n\n', []),
    ],
)
def test_strict_issue_codes(stream: bytes, expected: list[str]) -> None:
    _, issues = parse_stream(stream, strict=True)
    assert [i.code for i in issues] == expected
    assert all(i.code in ISSUE_CODES for i in issues)
    parser = SSEParser(strict=True)
    parser.feed(stream)
    parser.close()
    assert parser.ok is (not expected)
    lenient = SSEParser(strict=False)
    lenient.feed(stream)
    lenient.close()
    assert lenient.ok
    assert [i.code for i in lenient.issues] == expected  # always collected


def test_issue_offsets_and_excerpts() -> None:
    stream = b"data: a\n\nfoo: 1\ndata:b\r\n\n"
    _, issues = parse_stream(stream, strict=True)
    got = [(i.code, i.offset, i.excerpt) for i in issues]
    assert got == [
        ("unknown-field", 9, b"foo: 1\n"),
        ("field-without-space", 16, b"data:b\r\n"),
        ("cr-line-ending", 22, b"data:b\r\n"),
    ]
    for i in issues:
        assert isinstance(i, FramingIssue)
        assert i.message.endswith(".")
        assert len(i.excerpt) <= 80


def test_excerpt_capped_at_80_bytes() -> None:
    stream = b"foo: " + b"x" * 500 + b"\n\n"
    _, issues = parse_stream(stream)
    assert len(issues[0].excerpt) == 80


def test_issue_list_capped() -> None:
    block = b"foo: 1\ndata:a\ndata\nid: \x00\nretry: x\ndata: b\r\n\n"
    parser = SSEParser(strict=True)
    parser.feed(block * 100)
    parser.close()
    assert len(parser.issues) == MAX_ISSUES
    assert parser.issue_counts == {
        "unknown-field": 100,
        "field-without-space": 100,
        "field-without-colon": 100,
        "id-with-nul": 100,
        "invalid-retry": 100,
        "cr-line-ending": 100,
        "multi-line-data": 100,
    }
    assert not parser.ok


def test_pervasive_issue_does_not_crowd_out_others() -> None:
    stream = b"data: a\r\n\r\n" * 200 + b"foo: 1\ndata: b\n\n"
    _, issues = parse_stream(stream, strict=True)
    assert len(issues) <= MAX_ISSUES
    assert "unknown-field" in {i.code for i in issues}


# ----------------------------------------------------------- performance


def test_many_events_and_long_line_fed_bytewise() -> None:
    stream = b"".join(b'data: {"i":%d}\n\n' % i for i in range(5000))
    assert len(events_of(stream)) == 5000
    long_line = b"data: " + b"x" * 200_000 + b"\n\n"
    parser = SSEParser()
    out: list[SSEEvent] = []
    for i in range(0, len(long_line), 7):
        out.extend(parser.feed(long_line[i : i + 7]))
    assert [len(e.data) for e in out] == [200_000]


# ---------------------------------------------------- chunking properties

_PIECES = [
    b"data: a",
    b"data:b",
    b"data",
    b"data:  c",
    b"event: e",
    b"event:",
    b"id: 1",
    b"id",
    b"id: \x00",
    b"retry: 10",
    b"retry: x",
    b": c",
    b":",
    b"foo: 1",
    b"\xef\xbb\xbf",
    "é漢🦀".encode(),
    b"\xff",
    b"\xe6\xbc",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
]

streams = st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join) | st.binary(max_size=200)


@settings(max_examples=300, deadline=None)
@given(stream=streams, cuts=st.lists(st.integers(0, 400), max_size=12))
def test_any_chunking_gives_identical_results(stream: bytes, cuts: list[int]) -> None:
    assert snapshot(split_at(stream, cuts)) == snapshot([stream])


@settings(max_examples=300, deadline=None)
@given(stream=streams)
def test_matches_naive_reference(stream: bytes) -> None:
    got = [(e.event, e.data, e.id if e.id is not None else "") for e in events_of(stream)]
    assert got == reference(stream)


@settings(max_examples=100, deadline=None)
@given(stream=streams)
def test_raw_blocks_are_contiguous_substrings(stream: bytes) -> None:
    evs = events_of(stream)
    pos = 0
    for e in evs:
        found = stream.find(e.raw, pos)
        assert found >= 0
        assert e.raw.endswith((b"\n", b"\r"))
        pos = found + len(e.raw)
