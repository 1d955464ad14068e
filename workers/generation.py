"""The contract's generation semantics, applied by the core to every engine (DC-2.13, DC-2.5, DC-2.6).

An engine may stream text and nothing else; `Generation` turns its chunks into what a job
publishes and decides when and why the job is done:

* ``max_tokens``: ``tokens_out`` is the sum of the chunks' ``tokens``, never above ``max_tokens``;
  the chunk that reaches the limit ends the job with ``max_tokens``;
* ``stop`` strings: generation ends at the first point where any stop string has been generated,
  and the text ends before that stop string (``stop``); of stop strings completed at the same point
  the longest is cut (as an engine checking its text after every token would); a tail
  that could still grow into a stop string is held back until the next chunk decides, so a stop
  string split across chunks (or across a chunk that holds back incomplete UTF-8 and carries no
  text) is found all the same; a stop string found in the chunk that also reaches ``max_tokens``
  wins, as the text before it was generated within the budget;
* the engine's own ``stop_reason`` ends the job with that reason (an engine that stops natively
  gets the same result as one that leaves it to the core); an engine that ends its iterator
  without one ends with ``eos`` (or ``max_tokens`` when the budget was used up).

I/O-free and synchronous: `feed` is on the per-token path, so it does no more than it must.
"""

from __future__ import annotations

from workers.engines.base import Chunk, StopReason


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def first_stop(text: str, stops: tuple[str, ...]) -> int:
    """Where ``text`` is cut for the stop string completed first (earliest end, then earliest start); -1 if none."""
    best_end = best_start = -1
    for stop in stops:
        start = text.find(stop)
        if start < 0:
            continue
        end = start + len(stop)
        if best_end < 0 or end < best_end or (end == best_end and start < best_start):
            best_end, best_start = end, start
    return best_start


class Generation:
    """One job's chunks in, publishable text out; `reason` is set once the job is done."""

    __slots__ = ("held", "max_tokens", "reason", "stops", "tokens_out")

    def __init__(self, max_tokens: int, stops: tuple[str, ...] = ()) -> None:
        self.max_tokens = max_tokens
        self.stops = tuple(stop for stop in stops if stop)
        self.tokens_out = 0
        #: text that may still be the start of a stop string
        self.held = ""
        #: None while generating; the job's stop_reason once done (further chunks are refused)
        self.reason: StopReason | None = None

    def feed(self, chunk: Chunk) -> str:
        """The text to publish now for ``chunk`` (may be empty); sets `reason` when the job is done."""
        if self.reason is not None:
            raise RuntimeError("the generation is already done")
        tokens = self.tokens_out + chunk.tokens
        if tokens < self.max_tokens:
            self.tokens_out = tokens
            reached = False
        else:
            self.tokens_out = self.max_tokens
            reached = True
        if not self.stops:
            if chunk.stop_reason is not None:
                self.reason = chunk.stop_reason
            elif reached:
                self.reason = "max_tokens"
            return chunk.text
        text = self.held + chunk.text if self.held else chunk.text
        cut = first_stop(text, self.stops)
        if cut >= 0:
            self.held = ""
            self.reason = "stop"
            return text[:cut]
        if chunk.stop_reason is not None or reached:
            self.held = ""
            self.reason = chunk.stop_reason or "max_tokens"
            return text
        keep = held_back(text, self.stops)
        if keep:
            self.held = text[len(text) - keep :]
            return text[: len(text) - keep]
        self.held = ""
        return text

    def end(self) -> str:
        """The engine's iterator ended without a stop reason: the held text, and `reason` ``eos``."""
        if self.reason is None:
            self.reason = "max_tokens" if self.tokens_out >= self.max_tokens else "eos"
        text, self.held = self.held, ""
        return text
