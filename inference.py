"""From messages to streamed text: chat template, sampling, stop rules and KV-cache reuse across turns."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from config import ConfigError, InferenceConfig, config_from_args
from session import Session

END_TOKENS = ("<|im_end|>", "<|endoftext|>")
NUCLEUS_CANDIDATES = 512


class PromptTooLongError(ValueError):
    """The prompt cannot fit; the message says the numbers."""


@dataclass
class SamplingParams:
    max_new_tokens: int
    method: str = "top_p"
    value: float = 0.8
    temperature: float = 0.7
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, c: InferenceConfig, **overrides) -> "SamplingParams":
        base = dict(max_new_tokens=c.max_output_length, method=c.sampling_method, value=c.sampling_value,
                    temperature=c.temperature, seed=c.seed)
        return cls(**{**base, **overrides})


@dataclass
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    reused_tokens: int
    first_token_s: float
    decode_tok_s: float
    total_tok_s: float


@dataclass
class Delta:
    text: str
    token_id: int | None
    finish_reason: str | None = None
    stats: GenerationStats | None = None


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def sample(logits: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
    """Pick the next token from float32 logits [vocab]."""
    if p.method == "greedy" or p.temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / p.temperature
    if p.method == "top_k":
        k = max(1, min(int(p.value), scaled.size))
        ids = np.argpartition(-scaled, k - 1)[:k]
        return int(rng.choice(ids, p=softmax(scaled[ids])))
    probs = softmax(scaled)
    # The nucleus almost always lies among the few hundred likeliest tokens: sort only those,
    # and fall back to the whole vocabulary when their mass is short of p.
    k = min(NUCLEUS_CANDIDATES, probs.size)
    ids = np.argpartition(-probs, k - 1)[:k]
    if probs[ids].sum() < p.value:
        ids = np.arange(probs.size)
    ids = ids[np.argsort(-probs[ids])]
    keep = int(np.searchsorted(np.cumsum(probs[ids]), p.value)) + 1
    ids = ids[:keep]
    return int(rng.choice(ids, p=probs[ids] / probs[ids].sum()))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def stop_holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters might be the start of a stop string, and so must wait."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return hold


class Inference:
    def __init__(self, config: InferenceConfig, session: Session | None = None):
        from transformers import AutoTokenizer

        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(config.hf_model_dir, local_files_only=True)
        self.session = session or Session.fromConfig(config)
        self.eos_token_ids = self._eos_ids(Path(config.hf_model_dir))
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
        limit = self.config.max_input_length
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
            # Closed by the consumer (a client left): that happens only at a yield, where the cache and
            # _cached_ids agree, so the next turn can still reuse them.
            raise
        except BaseException:
            # A failure inside a graph call may leave the cache half-written: forget it rather than reuse it.
            self.reset()
            raise

    def _generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        rng = np.random.default_rng(params.seed)
        start = time.perf_counter()
        logits, reused = self._prefill(prompt_ids)
        generated: list[int] = []
        sent, first_token_at, finish = 0, 0.0, "length"
        # Tokens up to the last complete character decode to text that never changes: only the tail
        # after them is decoded each step, so a step's cost does not grow with the answer.
        settled, settled_text = 0, ""
        while True:
            token = sample(logits, params, rng)
            if not generated:
                first_token_at = time.perf_counter()
            if token in self.eos_token_ids:
                finish = "stop"
                break
            generated.append(token)
            tail = self.tokenizer.decode(generated[settled:], skip_special_tokens=True)
            text = settled_text + tail
            # A trailing U+FFFD is half of a multi-byte character: wait for the rest of it.
            complete = not tail.endswith("\ufffd")
            if complete:
                settled, settled_text = len(generated), text
            hit = min((i for i in (text.find(s) for s in params.stop if s) if i >= 0), default=-1)
            if hit >= 0:
                if hit > sent:
                    yield Delta(text[sent:hit], token)
                finish = "stop"
                break
            ready = len(text) - stop_holdback(text, params.stop) if complete else sent
            if ready > sent:
                yield Delta(text[sent:ready], token)
                sent = ready
            if len(generated) >= params.max_new_tokens or self.session.length >= self.session.kv_len:
                if len(text) > sent:  # what a possible stop string's start or a half character held back
                    yield Delta(text[sent:], None)
                break
            logits = self.session.run(np.array([[token]], dtype=np.int64))
            self._cached_ids.append(token)
        end = time.perf_counter()
        n = len(generated)
        stats = GenerationStats(
            prompt_tokens=len(prompt_ids), completion_tokens=n, reused_tokens=reused,
            first_token_s=first_token_at - start,
            decode_tok_s=(n - 1) / (end - first_token_at) if n > 1 and end > first_token_at else 0.0,
            total_tok_s=n / (end - start) if end > start else 0.0)
        yield Delta("", None, finish_reason=finish, stats=stats)


def load_inference(args: argparse.Namespace) -> Inference:
    """Config and engine from parsed flags. Every failure a user can cause or fix (paths, flags, a model
    file onnxruntime or pyACL cannot load) becomes a ConfigError with a one-line message."""
    try:
        return Inference(config_from_args(args))
    except ConfigError:
        raise
    except (OSError, RuntimeError, ValueError) as e:  # onnxruntime and AclSession raise RuntimeError
        raise ConfigError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None
