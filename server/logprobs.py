"""Logprobs as OpenAI shows them: a token as its text and its UTF-8 bytes, in the chat shape
(choices[].logprobs.content[]) and the legacy completions shape (tokens, token_logprobs, top_logprobs,
text_offset)."""
from __future__ import annotations

from functools import lru_cache

from engine.sampling import TokenLogprob


def byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE (GPT-2's, Qwen's) writes each byte as one printable character: the printable Latin-1
    bytes as themselves, the others (controls, space, soft hyphen) as the characters from U+0100 on, in
    byte order. Returned reversed: character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


class TokenText:
    """A tokenizer's tokens as bytes and text. A token holding part of a character shows its bytes as \\xNN
    in the text, as OpenAI's do; `bytes` always has the exact bytes."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.alphabet = byte_level_alphabet()
        self.bytes = lru_cache(maxsize=1 << 16)(self._bytes)

    def _bytes(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if piece is None:
            return b""
        if all(c in self.alphabet for c in piece):
            return bytes(self.alphabet[c] for c in piece)
        return piece.encode()  # an added token kept as text (e.g. <|im_end|> in some tokenizers)

    def text(self, token: int) -> str:
        return self.bytes(token).decode("utf-8", errors="backslashreplace")


def chat_content(entries: list[TokenLogprob], words: TokenText) -> list[dict]:
    """choices[].logprobs.content of a chat answer (or of one streamed chunk)."""
    def one(token: int, logprob: float) -> dict:
        return {"token": words.text(token), "logprob": logprob, "bytes": list(words.bytes(token))}

    return [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries]


def chat_logprobs(entries: list[TokenLogprob] | None, words: TokenText) -> dict | None:
    return None if entries is None else {"content": chat_content(entries, words), "refusal": None}


def legacy(entries: list[TokenLogprob], words: TokenText, offset: int) -> dict:
    """A completion choice's logprobs; text_offset counts characters of the choice's text from `offset`."""
    tokens = [words.text(e.token) for e in entries]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{words.text(t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}
