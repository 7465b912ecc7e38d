"""The Session interface every backend implements: one call adds tokens to the KV cache and returns logits.

A Session is one conversation's view of the cache: `run` (the prefill split into chunks, power-of-two
ones unless the backend takes any length; shared by every backend), `run_all`, `truncate` and `reset`; a
backend implements only `_forward` (one graph call on one chunk) and `truncate`.

A backend whose cache holds several conversations (`--max_batch` rows) derives from MultiRowSession:
`row_session(i)` is row i as a Session of its own, and `decode` runs one token for several rows in one
graph call. The session's own Session methods act on row 0, so a one-row session is used exactly like
a plain one.
"""
from __future__ import annotations

import numpy as np

from config import InferenceConfig
from core.contract import mismatches, read_meta
from core.errors import UserError
from backends.kv_cache import CacheFullError


def prefill_chunks(n: int, max_prefill_length: int) -> list[int]:
    """Split n tokens into power-of-two chunks no longer than max_prefill_length: 12, 8 -> [8, 4].
    The NPU model is compiled for exactly these lengths, so every backend uses the same split."""
    if n < 0 or max_prefill_length < 1:
        raise ValueError(f"bad prefill split: n={n}, max_prefill_length={max_prefill_length}")
    if n == 0:
        return []
    size = min(max_prefill_length, 1 << (n.bit_length() - 1))
    return [size] + prefill_chunks(n - size, max_prefill_length)


def even_chunks(n: int, max_prefill_length: int) -> list[int]:
    """Split n tokens into chunks of max_prefill_length and one shorter rest: 300, 256 -> [256, 44]. For a
    graph that takes any chunk length: a prompt's odd tail then costs one call, not one per set bit."""
    if n < 0 or max_prefill_length < 1:
        raise ValueError(f"bad prefill split: n={n}, max_prefill_length={max_prefill_length}")
    whole, rest = divmod(n, max_prefill_length)
    return [max_prefill_length] * whole + ([rest] if rest else [])


class Session:
    kv_len: int
    length: int
    rows = 1  # conversations the cache holds
    # The NPU's .om is compiled for power-of-two chunk lengths; a graph with dynamic shapes takes any.
    any_chunk_length = False

    def __init__(self, config: InferenceConfig):
        self.config = config

    def run(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed input_ids [1, n] (prefill in chunks, or one decode step) and return the float32 logits
        of the last token."""
        n = input_ids.shape[1]
        self._check_room(n)
        chunks = self.chunks(n)
        start, logits = 0, None
        for i, size in enumerate(chunks):
            logits = self._forward(input_ids[:, start:start + size], 1 if i == len(chunks) - 1 else 0)
            start += size
        return logits[-1]

    def chunks(self, n: int) -> list[int]:
        """How n prompt tokens are split into graph calls: power-of-two chunks, or, for a graph that takes
        any chunk length, as few calls as --max_prefill_length allows."""
        split = even_chunks if self.any_chunk_length else prefill_chunks
        return split(n, self.config.session.max_prefill_length)

    def feed(self, input_ids: np.ndarray, want_logits: bool) -> np.ndarray | None:
        """One prefill chunk, input_ids [1, n] with n no longer than --max_prefill_length (and a power of two
        unless the graph takes any chunk length), in one graph call; the float32 logits of its last token
        when wanted, else None. What lets a scheduler interleave the chunks of a long prompt with other
        work."""
        n = input_ids.shape[1]
        self._check_room(n)
        if n > self.config.session.max_prefill_length or (n & (n - 1) and not self.any_chunk_length):
            raise ValueError(f"a prefill chunk of {n} tokens: longer than --max_prefill_length"
                             f"{'' if self.any_chunk_length else ' or not a power of two'}")
        logits = self._forward(input_ids, 1 if want_logits else 0)
        return logits[-1] if want_logits else None

    def run_all(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed input_ids [1, n] in one graph call and return the float32 logits of every one of them,
        [n, vocab]: what checking n draft tokens at once needs."""
        n = input_ids.shape[1]
        self._check_room(n)
        return self._forward(input_ids, n)

    def _check_room(self, n: int) -> None:
        if n == 0:
            raise ValueError("run() needs at least one token")
        if self.length + n > self.kv_len:
            raise CacheFullError(f"{n} new tokens do not fit: {self.length} of {self.kv_len} cache slots used")

    def _forward(self, input_ids: np.ndarray, n_logits: int) -> np.ndarray | None:
        """One graph call on one chunk; returns the float32 logits of its last n_logits tokens,
        [n_logits, vocab], or None for 0."""
        raise NotImplementedError

    def truncate(self, n: int) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self.truncate(0)

    def copy_row(self, src: int, dst: int, n: int) -> bool:
        """Make row dst hold the first n tokens of row src (n choices of one prompt share its prefill);
        False when this backend cannot, and dst must be prefilled instead."""
        return False

    def row_session(self, i: int) -> "Session":
        """Row i of the cache as a Session of its own; a one-row session is its own row 0."""
        if i != 0:
            raise IndexError(f"row {i}: this session has one row")
        return self

    def decode(self, rows: list[int], tokens: list[int]) -> np.ndarray:
        """One token for each of `rows` (distinct), and the float32 logits after each, [len(rows), vocab].
        Here one call per row; a backend with several rows runs them in one graph call."""
        return np.stack([self.row_session(r).run(np.array([[t]], np.int64)) for r, t in zip(rows, tokens)])


class MultiRowSession(Session):
    """A cache of `--max_batch` rows, one conversation each. A backend implements `_forward_row` (one
    chunk on one row alone) and `_decode` (one token for each of two or more rows, in one graph call)."""

    def __init__(self, config: InferenceConfig, lengths: list[int] | None = None):
        super().__init__(config)
        self.rows = config.session.max_batch
        # Tokens each row holds. A subclass may hand in the list its cache keeps (never rebound).
        self.lengths = lengths if lengths is not None else [0] * self.rows
        self._views = [Row(self, i) for i in range(self.rows)]

    @property
    def length(self) -> int:
        return self.lengths[0]

    def row_session(self, i: int) -> "Row":
        return self._views[i]

    def _forward(self, input_ids: np.ndarray, n_logits: int) -> np.ndarray | None:
        return self._forward_row(input_ids, n_logits, 0)

    def truncate(self, n: int) -> None:
        self.truncate_row(n, 0)

    def truncate_row(self, n: int, row: int) -> None:
        # Slots past a row's length are never read (masked, or past its seqlens): forgetting is shortening.
        self.lengths[row] = max(0, min(n, self.lengths[row]))

    def reset(self) -> None:
        """Forget every row."""
        for i in range(self.rows):
            self.row_session(i).reset()

    def decode(self, rows: list[int], tokens: list[int]) -> np.ndarray:
        if len(set(rows)) != len(rows) or len(rows) != len(tokens):
            raise ValueError(f"decode needs distinct rows and one token each: rows {rows}, tokens {tokens}")
        if len(rows) == 1:  # one row runs alone: idle rows cost nothing then
            return self.row_session(rows[0]).run(np.array([tokens], np.int64))[None]
        for r in rows:
            self.row_session(r)._check_room(1)
        return self._decode(list(rows), np.array(tokens, np.int64))

    def _forward_row(self, input_ids: np.ndarray, n_logits: int, row: int) -> np.ndarray | None:
        """One graph call on one chunk of one row; as Session._forward."""
        raise NotImplementedError

    def _decode(self, rows: list[int], tokens: np.ndarray) -> np.ndarray:
        """One graph call that adds tokens[i] to row rows[i]; the float32 logits [len(rows), vocab]. Rows
        not listed keep what they hold (at most their last slot may be given up, see onnx_cpu_graph.py)."""
        raise NotImplementedError


class Row(Session):
    """Row `index` of a MultiRowSession, as a one-conversation Session."""

    def __init__(self, batch: MultiRowSession, index: int):
        super().__init__(batch.config)
        self.batch, self.index = batch, index
        self.any_chunk_length = batch.any_chunk_length

    @property
    def kv_len(self) -> int:
        return self.batch.kv_len

    @property
    def length(self) -> int:
        return self.batch.lengths[self.index]

    def _forward(self, input_ids: np.ndarray, n_logits: int) -> np.ndarray | None:
        return self.batch._forward_row(input_ids, n_logits, self.index)

    def truncate(self, n: int) -> None:
        self.batch.truncate_row(n, self.index)


def refuse(config: InferenceConfig, backend: str, **unsupported: str) -> None:
    """A flag the backend cannot honour is refused in one line, never silently ignored.
    `unsupported`: flag name -> why, for each flag that is set."""
    for flag, why in unsupported.items():
        if getattr(config.session, flag) is not None:
            raise UserError(f"--{flag} does not apply to {backend}: {why}")


def checked_meta(config: InferenceConfig) -> dict[str, str]:
    """The ONNX model's export metadata, refused when it was exported for another model or cache."""
    s = config.session
    meta = read_meta(s.onnx_model_path)
    problems = mismatches(meta, {"kv_cache_length": s.kv_cache_length, **config.shape.as_meta()})
    if problems:
        raise UserError(f"{s.onnx_model_path} does not fit this run: {'; '.join(problems)} "
                        "(re-export, or pass the matching --hf_model_dir / --kv_cache_length)")
    return meta
