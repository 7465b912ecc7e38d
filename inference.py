"""From messages to streamed text: chat template, the generation loop, stop rules and KV-cache reuse across
turns. The parts that know nothing of chat live in engine/: sampling, speculative decoding, the text layer."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

from config import InferenceConfig
from core.errors import UserError
from engine.sampling import SamplingParams, sample
from engine.speculative import Drafter, speculative_tokens
from engine.text import Detokenizer, StopMatcher
from kvcache import common_prefix
from session import Session, open_session

END_TOKENS = ("<|im_end|>", "<|endoftext|>")


class PromptTooLongError(ValueError):
    """The prompt cannot fit; the message says the numbers."""


@dataclass
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    reused_tokens: int
    first_token_s: float
    decode_tok_s: float
    total_tok_s: float
    draft_acceptance: float | None = None  # share of judged draft guesses kept (speculative decoding)


@dataclass
class Delta:
    text: str
    token_id: int | None
    finish_reason: str | None = None
    stats: GenerationStats | None = None


class Inference:
    def __init__(self, config: InferenceConfig, session: Session | None = None):
        from transformers import AutoTokenizer

        self.config = config
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.session.hf_model_dir, local_files_only=True)
        except (OSError, ValueError) as e:  # no tokenizer files, or ones transformers cannot read
            raise UserError(f"--hf_model_dir {config.session.hf_model_dir}: no usable tokenizer there "
                            f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
        self.session = session or open_session(config)
        self.drafter = Drafter.from_config(config) if config.session.draft_onnx_model_path else None
        self.eos_token_ids = self._eos_ids(Path(config.session.hf_model_dir))
        self._cached_ids: list[int] = []

    def _eos_ids(self, model_dir: Path) -> set[int]:
        ids = set()
        gen = model_dir / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in END_TOKENS if t in vocab)
        return ids

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        # Rendered to text first: transformers 5 returns a dict, not ids, when it tokenizes here itself.
        text = self.tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                                  tokenize=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def fit_messages(self, messages: list[dict]) -> tuple[list[dict], list[int]]:
        """Drop the oldest turns (never the system message or the last message) until the prompt fits
        max_input_length; returns the kept messages and their token ids."""
        limit = self.config.generation.max_input_length
        kept = list(messages)
        while True:
            ids = self.apply_chat_template(kept)
            if len(ids) <= limit:
                return kept, ids
            first = 1 if kept and kept[0].get("role") == "system" else 0
            if len(kept) - first <= 1:
                raise PromptTooLongError(f"the prompt is {len(ids)} tokens; at most {limit} fit "
                                         f"(--max_input_length {limit}, --kv_cache_length {self.session.kv_len})")
            del kept[first]

    def chat(self, messages: list[dict], params: SamplingParams, tools: list[dict] | None = None) -> Iterator[Delta]:
        return self.stream(self.apply_chat_template(messages, tools), params)

    def reset(self) -> None:
        self.session.reset()
        self._cached_ids = []
        if self.drafter:
            self.drafter.reset()

    def _prefill(self, prompt_ids: list[int]) -> tuple[np.ndarray, int]:
        """Run only the tokens past what the cache already holds; returns last logits and reused count."""
        reuse = min(common_prefix(self._cached_ids, prompt_ids), len(prompt_ids) - 1)
        self.session.truncate(reuse)
        self._cached_ids = self._cached_ids[:reuse]
        logits = self.session.run(np.array([prompt_ids[reuse:]], dtype=np.int64))
        self._cached_ids = list(prompt_ids)
        return logits, reuse

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        """Generate after prompt_ids. The last Delta carries finish_reason and stats."""
        kv_len = self.session.kv_len
        if not prompt_ids:
            raise PromptTooLongError("the prompt is empty")
        if len(prompt_ids) >= kv_len:
            raise PromptTooLongError(f"the prompt is {len(prompt_ids)} tokens; the KV cache holds {kv_len} "
                                     "and the answer needs at least one more")
        try:
            yield from self._generate(prompt_ids, params)
        except GeneratorExit:
            # Closed by the consumer (a client left): that happens only at a yield, where the cache's
            # first len(_cached_ids) slots hold _cached_ids, so the next turn can still reuse them.
            raise
        except BaseException:
            # A failure inside a graph call may leave the cache half-written: forget it rather than reuse it.
            self.reset()
            raise

    def _tokens(self, logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> Iterator[int]:
        """The generated tokens, one per step, after the prefill's last logits. When one is yielded,
        _cached_ids lists the tokens before it; the cache may run ahead of that, never behind."""
        if self.drafter:
            yield from speculative_tokens(self.session, self.drafter, self._cached_ids, logits, params, rng)
            return
        while True:
            token = sample(logits, params, rng)
            yield token
            logits = self.session.run(np.array([[token]], dtype=np.int64))
            self._cached_ids.append(token)

    def _generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        rng = np.random.default_rng(params.seed)
        start = time.perf_counter()
        logits, reused = self._prefill(prompt_ids)
        tokens = self._tokens(logits, params, rng)
        drafted = (self.drafter.judged, self.drafter.accepted) if self.drafter else None
        detokenizer = Detokenizer(partial(self.tokenizer.decode, skip_special_tokens=True))
        stops = StopMatcher(params.stop)
        n, first_token_at, finish = 0, 0.0, "length"
        for token in tokens:
            if not n:
                first_token_at = time.perf_counter()
            if token in self.eos_token_ids:
                finish = "stop"
                break
            n += 1
            text = stops.feed(detokenizer.add(token), detokenizer.pending)
            if text:
                yield Delta(text, token)
            if stops.stop is not None:
                finish = "stop"
                break
            if n >= params.max_new_tokens or len(self._cached_ids) >= self.session.kv_len:
                break
        # Unless a stop string ended the answer, what waited for the rest of a stop string or of a
        # character will not get it now: it is answer text.
        if stops.stop is None and (rest := stops.held + detokenizer.pending):
            yield Delta(rest, None)
        tokens.close()
        yield Delta("", None, finish_reason=finish,
                    stats=self._stats(len(prompt_ids), n, reused, start, first_token_at, drafted))

    def _stats(self, prompt_tokens: int, n: int, reused: int, start: float, first_token_at: float,
               drafted: tuple[int, int] | None) -> GenerationStats:
        """Counts and speeds of one answer; `drafted` is the drafter's (judged, accepted) before it."""
        end = time.perf_counter()
        stats = GenerationStats(
            prompt_tokens=prompt_tokens, completion_tokens=n, reused_tokens=reused,
            first_token_s=first_token_at - start,
            decode_tok_s=(n - 1) / (end - first_token_at) if n > 1 and end > first_token_at else 0.0,
            total_tok_s=n / (end - start) if end > start else 0.0)
        if drafted and self.drafter.judged > drafted[0]:
            stats.draft_acceptance = (self.drafter.accepted - drafted[1]) / (self.drafter.judged - drafted[0])
        return stats


def load_inference(args: argparse.Namespace) -> Inference:
    """Config and engine from parsed flags; a problem the user can fix is a UserError (one line)."""
    return Inference(InferenceConfig.from_args(args))
