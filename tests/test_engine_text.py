"""The text layer (engine/text.py): Detokenizer turns streamed ids into settled text with a real
byte-level tokenizer, StopMatcher cuts stop strings out of streamed text and holds back their starts."""
from __future__ import annotations

import random
from functools import partial

import pytest
from transformers import AutoTokenizer

from engine.text import Detokenizer, StopMatcher


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


class CountingDecode:
    """A tokenizer's decode that remembers how many ids each call decoded."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def __call__(self, ids: list[int]) -> str:
        self.calls.append(len(ids))
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def stream(detokenizer: Detokenizer, ids: list[int]) -> list[str]:
    return [detokenizer.add(i) for i in ids]


def feed_all(matcher: StopMatcher, pieces: list[str]) -> list[str]:
    out = []
    for piece in pieces:
        out.append(matcher.feed(piece))
        if matcher.stop is not None:
            break
    return out


# Detokenizer

@pytest.mark.parametrize("text", ["你好，世界", "ok 😀 done 🚀🎉", "龘龘 mixed 数据 and naïve"])
def test_characters_split_across_tokens_arrive_whole(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert any(tokenizer.decode(ids[:i]).endswith("\ufffd") for i in range(1, len(ids))), \
        "the text must really split a character between tokens"
    detokenizer = Detokenizer(partial(tokenizer.decode, skip_special_tokens=True))
    pieces = []
    for i, token in enumerate(ids, 1):
        pieces.append(detokenizer.add(token))
        # Settled text plus the pending half character is all decoded so far, and never loses a byte.
        assert "".join(pieces) + detokenizer.pending == tokenizer.decode(ids[:i])
        assert "\ufffd" not in pieces[-1]
    assert "".join(pieces) == text and detokenizer.pending == ""


def test_a_half_character_waits_in_pending(tokenizer):
    ids = tokenizer.encode("ab 龘", add_special_tokens=False)
    detokenizer = Detokenizer(partial(tokenizer.decode, skip_special_tokens=True))
    pieces = stream(detokenizer, ids[:-1])
    assert "".join(pieces) == "ab " and detokenizer.pending.endswith("\ufffd")
    assert detokenizer.add(ids[-1]) == "龘" and detokenizer.pending == ""


def test_special_tokens_add_no_text(tokenizer):
    detokenizer = Detokenizer(partial(tokenizer.decode, skip_special_tokens=True))
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    ids = tokenizer.encode("hi", add_special_tokens=False)
    assert "".join(stream(detokenizer, [im_start] + ids + [im_start])) == "hi"


def test_decode_work_per_step_does_not_grow_with_the_answer(tokenizer):
    """Each step decodes only the ids since the last whole character: at most the 4 bytes of one
    character, however long the answer already is (counted, not timed)."""
    text = "The weather today is sunny 😀 明天可能会下雨 龘 ok. " * 30
    ids = tokenizer.encode(text, add_special_tokens=False)
    decode = CountingDecode(tokenizer)
    pieces = stream(Detokenizer(decode), ids)
    assert "".join(pieces) == text and len(ids) > 500
    assert len(decode.calls) == len(ids)
    assert max(decode.calls) <= 4
    assert sum(decode.calls) < 2 * len(ids)  # the whole answer's decoding is linear in its length


# StopMatcher

def test_no_stops_releases_everything_at_once():
    matcher = StopMatcher([])
    assert feed_all(matcher, ["alpha ", "beta"]) == ["alpha ", "beta"]
    assert matcher.stop is None and matcher.held == ""


def test_stop_split_across_pieces_is_cut_out():
    matcher = StopMatcher(["STOP"])
    out = feed_all(matcher, ["alpha ", "beta S", "T", "OP gamma"])
    assert "".join(out) == "alpha beta " and out[1] == "beta "  # "S" waited
    assert matcher.stop == "STOP" and matcher.stop_at == len("alpha beta ")
    assert matcher.held == "" and matcher.feed("more") == ""


def test_the_first_of_several_stops_wins():
    matcher = StopMatcher(["END", "\n\n", "x"])
    assert "".join(feed_all(matcher, ["one\n", "\ntwo END x"])) == "one"
    assert matcher.stop == "\n\n" and matcher.stop_at == 3


def test_stops_at_the_same_place_report_the_first_listed():
    matcher = StopMatcher(["ab", "abc"])
    assert matcher.feed("xxabc") == "xx" and matcher.stop == "ab" and matcher.stop_at == 2


def test_stop_at_the_very_start_releases_nothing():
    matcher = StopMatcher(["<end>"])
    assert feed_all(matcher, ["<e", "nd> tail"]) == ["", ""]
    assert matcher.stop == "<end>" and matcher.stop_at == 0


def test_stop_inside_one_piece_releases_what_came_before():
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("a STOP b STOP") == "a " and matcher.stop_at == 2


def test_a_prefix_that_does_not_complete_is_released_when_it_breaks():
    matcher = StopMatcher(["STOP"])
    assert feed_all(matcher, ["a ST", "aR b"]) == ["a ", "STaR b"]
    assert matcher.stop is None


def test_holdback_keeps_the_longest_possible_start():
    matcher = StopMatcher(["abc", "bcd"])
    assert matcher.feed("xxab") == "xx" and matcher.held == "ab"
    assert matcher.feed("c") == "" and matcher.stop == "abc"


def test_holdback_is_released_at_the_end():
    matcher = StopMatcher(["</answer>"])
    assert feed_all(matcher, ["done </ans"]) == ["done "]
    assert matcher.held == "</ans" and matcher.stop is None


def test_pending_text_is_searched_but_not_released():
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("a ", pending="b\ufffd") == "a "
    assert matcher.feed("", pending="b STOP\ufffd") == "b " and matcher.stop_at == 4


def test_streamed_pieces_add_up_to_the_text_before_the_first_stop():
    """Any split of any text into pieces gives what cutting the whole text at its first stop gives."""
    rng = random.Random(0)
    alphabet = "ab STOP\n龘😀"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        stops = [("".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 4)))) for _ in range(rng.randrange(3))]
        cuts = sorted(rng.sample(range(len(text) + 1), rng.randrange(min(len(text), 6) + 1)))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        matcher = StopMatcher(stops)
        out = "".join(feed_all(matcher, pieces))
        hits = [(i, n) for n, i in enumerate(text.find(s) for s in stops if s) if i >= 0]
        if hits:
            assert out == text[:min(hits)[0]] and matcher.stop_at == min(hits)[0]
        else:
            assert out + matcher.held == text and matcher.stop is None


def test_stop_split_across_real_tokens(tokenizer):
    """Detokenizer and StopMatcher together, as Inference uses them, on a stop string made of
    several tokens and next to a character split across tokens."""
    text = "好 龘<|stop|>龘 rest"
    ids = tokenizer.encode(text, add_special_tokens=False)
    detokenizer = Detokenizer(partial(tokenizer.decode, skip_special_tokens=True))
    matcher = StopMatcher(["<|stop|>"])
    out = []
    for i in ids:
        out.append(matcher.feed(detokenizer.add(i), detokenizer.pending))
        if matcher.stop is not None:
            break
    assert "".join(out) == "好 龘" and matcher.stop_at == len("好 龘")
    assert len(out) < len(ids)
