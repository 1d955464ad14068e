"""workers.generation: the contract's max_tokens / stop / stop_reason rules, applied to any chunking."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.engines.base import Chunk, StopReason
from workers.generation import Generation, held_back


def run(chunks: list[Chunk], max_tokens: int = 100, stops: tuple[str, ...] = ()) -> tuple[str, int, StopReason, int]:
    """(published text, tokens_out, reason, chunks consumed) as the lifecycle drives a generation."""
    generation = Generation(max_tokens, stops)
    out = []
    consumed = 0
    for chunk in chunks:
        consumed += 1
        out.append(generation.feed(chunk))
        if generation.reason is not None:
            break
    else:
        out.append(generation.end())
    assert generation.reason is not None
    return "".join(out), generation.tokens_out, generation.reason, consumed


def expected(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The reference rule, character by character: the first prefix of ``text`` that ends with a stop
    string ends generation, and the text is cut before the longest stop string it ends with."""
    for end in range(len(text) + 1):
        done = [stop for stop in stops if stop and text[:end].endswith(stop)]
        if done:
            return text[: end - max(map(len, done))], True
    return text, False


def split(text: str, cuts: list[int]) -> list[Chunk]:
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [Chunk(text[a:b]) for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("cut", range(len("Hello, world. Bye") + 1))
def test_a_stop_string_is_found_at_every_split_of_the_text(cut: int) -> None:
    text = "Hello, world. Bye"
    chunks = [Chunk(text[:cut], tokens=1), Chunk(text[cut:], tokens=1)]
    in_first_chunk = cut >= text.index("world.") + len("world.")
    assert run(chunks, stops=("world.",))[:3] == ("Hello, ", 1 if in_first_chunk else 2, "stop")


def test_stop_at_the_very_start_publishes_nothing() -> None:
    assert run([Chunk("ST"), Chunk("OP and more")], stops=("STOP",))[:3] == ("", 2, "stop")


def test_overlapping_stop_prefixes_hold_back_the_longest_candidate() -> None:
    generation = Generation(100, ("abcd", "bcx"))
    assert generation.feed(Chunk("zab")) == "z"  # "ab" may grow into "abcd"
    assert generation.feed(Chunk("c")) == ""  # "abc" may grow into "abcd", "bc" into "bcx"
    assert generation.feed(Chunk("x")) == "a"  # "bcx" found: the text ends before it
    assert generation.reason == "stop"


def test_held_text_that_never_completes_a_stop_string_is_published() -> None:
    assert run([Chunk("ab"), Chunk("c")], stops=("abd",))[:3] == ("abc", 2, "eos")
    assert held_back("xab", ("abd",)) == 2
    assert held_back("xyz", ("abd",)) == 0


def test_an_engine_that_ignores_max_tokens_is_cut_off() -> None:
    text, tokens_out, reason, consumed = run([Chunk("t")] * 50, max_tokens=7)
    assert (text, tokens_out, reason, consumed) == ("t" * 7, 7, "max_tokens", 7)


def test_tokens_out_never_exceeds_max_tokens_when_a_chunk_covers_several() -> None:
    assert run([Chunk("ab", tokens=2), Chunk("cde", tokens=3)], max_tokens=4)[1:3] == (4, "max_tokens")


def test_a_stop_in_the_chunk_that_reaches_max_tokens_wins() -> None:
    assert run([Chunk("ab"), Chunk("cSTOPd")], max_tokens=2, stops=("STOP",))[:3] == ("abc", 2, "stop")


def test_max_tokens_reached_flushes_the_held_text() -> None:
    assert run([Chunk("aST"), Chunk("x")], max_tokens=1, stops=("STOP",))[:3] == ("aST", 1, "max_tokens")


def test_an_engine_ending_without_a_stop_reason_ends_with_eos() -> None:
    assert run([Chunk("a"), Chunk("b")], max_tokens=10)[2] == "eos"
    assert run([], max_tokens=10)[:3] == ("", 0, "eos")


def test_the_engines_own_stop_reason_is_kept() -> None:
    assert run([Chunk("a"), Chunk("", tokens=0, stop_reason="eos"), Chunk("never")])[:3] == ("a", 1, "eos")
    assert run([Chunk("ab", stop_reason="stop")], stops=("zz",))[:3] == ("ab", 1, "stop")


def test_chunks_without_text_count_tokens_and_keep_the_held_text() -> None:
    """An engine holding back incomplete UTF-8 yields chunks that carry tokens but no text."""
    generation = Generation(10, ("é!",))
    assert generation.feed(Chunk("caf", tokens=1)) == "caf"
    assert generation.feed(Chunk("", tokens=1)) == ""
    assert generation.feed(Chunk("é", tokens=1)) == ""
    assert generation.feed(Chunk("!", tokens=1)) == ""
    assert (generation.reason, generation.tokens_out) == ("stop", 4)


def test_the_stop_string_completed_first_ends_generation() -> None:
    """ "T" is complete at the third character, "STS" only at the fourth: generation ends at "T"."""
    assert run([Chunk("SSTS")], stops=("T", "STS"))[:3] == ("SS", 1, "stop")
    assert run([Chunk(c) for c in "SSTS"], stops=("T", "STS"))[:3] == ("SS", 3, "stop")
    assert run([Chunk("abcd")], stops=("cd", "bcd"))[:3] == ("a", 1, "stop")


def test_feeding_a_finished_generation_is_a_bug() -> None:
    generation = Generation(1)
    generation.feed(Chunk("a"))
    with pytest.raises(RuntimeError):
        generation.feed(Chunk("b"))


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abcST😀é\n", max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=12),
    stops=st.lists(st.text(alphabet="abcST😀é\n", min_size=1, max_size=4), max_size=4).map(tuple),
)
def test_any_chunking_gives_the_reference_result(text: str, cuts: list[int], stops: tuple[str, ...]) -> None:
    chunks = split(text, cuts)
    published, tokens_out, reason, _ = run(chunks, max_tokens=1000, stops=stops)
    want, stopped = expected(text, stops)
    assert published == want
    assert reason == ("stop" if stopped else "eos")
    assert tokens_out <= len(chunks)


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.text(alphabet="abS", max_size=3), max_size=20),
    max_tokens=st.integers(min_value=1, max_value=25),
)
def test_max_tokens_bounds_tokens_out_and_published_pieces(pieces: list[str], max_tokens: int) -> None:
    published, tokens_out, reason, consumed = run([Chunk(p) for p in pieces], max_tokens=max_tokens)
    assert tokens_out <= max_tokens
    assert published == "".join(pieces[:consumed])
    assert reason == ("max_tokens" if len(pieces) >= max_tokens else "eos")
