"""The text layer of a stream: token ids to text that never changes, and stop strings cut out of it.

Both classes are pure (no model, no tokenizer type) and do a bounded amount of work per call, so the
cost of streaming a token does not grow with the length of the answer.
"""
from __future__ import annotations

from typing import Callable

# What a decoder writes for bytes that are not (yet) a whole UTF-8 character.
REPLACEMENT = "\ufffd"


class Detokenizer:
    """Feed token ids one at a time; get the text they add once it is settled.

    Token ids up to the last complete character decode to text that never changes, so only the ids
    after them (the unsettled tail, normally none or the few bytes of one character) are decoded at
    each step. A tail whose text ends in U+FFFD holds half of a multi-byte character: it waits for
    the rest of it and is kept in `pending` meanwhile.

    `decode` turns a list of ids into text (e.g. a tokenizer's decode with special tokens skipped);
    decoding two lists one after the other must give the text of both together whenever the first
    ends on a whole character, as it does for byte-level tokenizers.
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self._unsettled: list[int] = []
        self.pending = ""  # the unsettled tail's text: ends in U+FFFD, or is empty

    def add(self, token_id: int) -> str:
        """The text that token_id settles: empty while a character is still incomplete."""
        self._unsettled.append(token_id)
        tail = self._decode(self._unsettled)
        if tail.endswith(REPLACEMENT):
            self.pending = tail
            return ""
        self._unsettled, self.pending = [], ""
        return tail


class StopMatcher:
    """Feed text as it settles; get the part that may be released now, and learn whether and where a
    stop string was hit.

    Released text never contains a stop string, nor anything after the first one. Text ending in the
    start of some stop string is held back until it either completes the stop or turns out not to;
    `held` is what waits, for the caller to release when the stream ends without a stop.

    Only the last (longest stop - 1) characters of earlier text are kept and searched again with the
    new text: a stop that was not in the earlier text must end in the new text.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._keep = max((len(s) for s in self.stops), default=1) - 1
        self._tail = ""  # the last _keep characters of the settled text
        self._held = 0  # how many characters at the end of _tail are not released yet
        self._fed = 0  # characters of settled text fed so far
        self.stop: str | None = None  # the stop string that was hit
        self.stop_at: int | None = None  # where it starts, counted in characters of all text fed

    @property
    def held(self) -> str:
        """Text fed but not released: a possible start of a stop string."""
        return self._tail[len(self._tail) - self._held:]

    def feed(self, text: str, pending: str = "") -> str:
        """Take newly settled text; return what may be released now.

        `pending` is text that follows it but may still change (a Detokenizer's half character): a
        stop string is looked for in it too, so a stop is seen as soon as its characters are, but it
        is never released, except the part before a stop string."""
        if self.stop is not None:
            return ""
        seen = self._tail + text + pending
        released_end = len(self._tail) - self._held  # in seen: text before this was released earlier
        hit = min(((i, n) for n, i in enumerate(seen.find(s) for s in self.stops) if i >= 0), default=None)
        if hit is not None:
            at, which = hit
            self.stop, self.stop_at = self.stops[which], self._fed - len(self._tail) + at
            self._tail, self._held = "", 0
            return seen[released_end:at]
        settled = self._tail + text
        hold = self._holdback(settled)
        out = settled[released_end:len(settled) - hold]
        self._fed += len(text)
        self._tail = settled[-self._keep:] if self._keep else ""
        self._held = hold
        return out

    def _holdback(self, text: str) -> int:
        """How many trailing characters of text might be the start of a stop string, and so must wait."""
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:n]):
                    hold = n
                    break
        return hold
