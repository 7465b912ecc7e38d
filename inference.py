"""From messages to streamed text: chat template, each answer's text layer (end tokens, stop strings,
limits, stats) and the engine that runs the answers. The parts that know nothing of chat live in engine/:
the scheduler (slots, KV-cache reuse across turns, continuous batching), sampling, speculative decoding,
the text layer.

One Inference serves `--max_batch` conversations at once: `start` queues an answer, `step` advances every
running answer (the server's model thread loops on it), `stream` drives one answer from the caller's
thread (the terminal chat: the same engine with one slot)."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from config import InferenceConfig
from core.errors import UserError
from engine.sampling import SamplingParams, TokenLogprob
from engine.scheduler import Request, Scheduler
from engine.speculative import Drafter
from engine.text import Detokenizer, StopMatcher
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
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens since the last Delta, if asked
    stop: str | None = None  # on the last Delta: the stop string that ended the answer, if one did


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
        drafter = Drafter.from_config(config) if config.session.draft_onnx_model_path else None
        self.scheduler = Scheduler(self.session, drafter)
        self.eos_token_ids = self._eos_ids(Path(config.session.hf_model_dir))

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

    def chat_text(self, messages: list[dict], tools: list[dict] | None = None, template_kwargs: dict | None = None,
                  add_generation_prompt: bool = True) -> str:
        """The chat template's text; template_kwargs: extra variables the template reads (enable_thinking)."""
        return self.tokenizer.apply_chat_template(messages, tools=tools or None,
                                                  add_generation_prompt=add_generation_prompt, tokenize=False,
                                                  **(template_kwargs or {}))

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None,
                            template_kwargs: dict | None = None) -> list[int]:
        # Rendered to text first: transformers 5 returns a dict, not ids, when it tokenizes here itself.
        text = self.chat_text(messages, tools, template_kwargs)
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

    def reset(self) -> None:
        """Forget every cached conversation (nothing may be running)."""
        self.scheduler.reset()

    def start(self, prompt_ids: list[int], params: SamplingParams) -> "Generation":
        """Queue a generation after prompt_ids; `step` runs it, its Deltas collect in `take()`."""
        generation = self._generation(prompt_ids, params)
        self.scheduler.submit(generation)
        return generation

    def start_choices(self, prompt_ids: list[int], params: SamplingParams, n: int,
                      first: int = 0) -> list["Generation"]:
        """Choices first .. first + n - 1 after one prompt, the prompt computed once (engine/scheduler.py);
        choice i samples with `params.for_choice(i)`, its own processors and seed."""
        group = [self._generation(prompt_ids, params.for_choice(first + i)) for i in range(n)]
        if n == 1:
            self.scheduler.submit(group[0])
        else:
            self.scheduler.submit_group(group)
        return group

    @property
    def slots(self) -> int:
        """Conversations served at once (--max_batch): one KV-cache slot each."""
        return len(self.scheduler.slots)

    def free_slots(self) -> int:
        """Slots a new generation would get now (negative: that many already wait for one)."""
        return self.scheduler.free_slots()

    def busy_slots(self) -> int:
        return self.scheduler.busy_slots()

    def recover(self, error: BaseException) -> None:
        """After a failure that belongs to no generation: fail every running or waiting generation with it
        and forget every cached row, so that the engine starts again from a clean state."""
        self.scheduler.fail_all(error)
        self.scheduler.reset()

    def _generation(self, prompt_ids: list[int], params: SamplingParams) -> "Generation":
        kv_len = self.session.kv_len
        if not prompt_ids:
            raise PromptTooLongError("the prompt is empty")
        if len(prompt_ids) >= kv_len:
            raise PromptTooLongError(f"the prompt is {len(prompt_ids)} tokens; the KV cache holds {kv_len} "
                                     "and the answer needs at least one more")
        return Generation(prompt_ids, params, partial(self.tokenizer.decode, skip_special_tokens=True),
                          self.eos_token_ids)

    def step(self, first_tokens: Callable[[], None] | None = None) -> None:
        """One scheduler step for every running generation (engine/scheduler.py); first_tokens is called
        whenever a prompt has been read and its generation holds its first token, within the step."""
        self.scheduler.step(first_tokens)

    def cancel(self, generation: "Generation") -> None:
        self.scheduler.cancel(generation)

    def abandon(self, generation: "Generation", error: BaseException) -> None:
        """Take a generation out with an error, its row forgotten: when cancelling it failed."""
        self.scheduler.fail(generation, error)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        """Generate after prompt_ids, driving the engine from this thread. The last Delta carries
        finish_reason and stats. Closing the stream early cancels the generation; its slot keeps the
        tokens its cache holds, so the next turn can still reuse them."""
        generation = self.start(prompt_ids, params)
        try:
            while True:
                while not generation.deltas and not generation.finished:
                    self.scheduler.step()
                yield from generation.take()
                if generation.finished and not generation.deltas:
                    if generation.error is not None:
                        raise generation.error
                    return
        finally:
            self.scheduler.cancel(generation)


class Generation(Request):
    """One answer: the text layer over the scheduler's tokens (end tokens, stop strings, limits), and the
    Deltas waiting for the consumer."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, decode: Callable[[list[int]], str],
                 eos_token_ids: set[int]):
        # What ends the answer: the model's end tokens (unless ignore_eos) and the request's stop_token_ids.
        self.end_ids = (set() if params.ignore_eos else set(eos_token_ids)) | set(params.stop_token_ids)
        super().__init__(prompt_ids, params, self.end_ids)
        self.deltas: list[Delta] = []
        self.detokenizer = Detokenizer(decode)
        self.stops = StopMatcher(params.stop)
        self.n, self.finish = 0, "length"
        self.logprobs: list[TokenLogprob] = []  # chosen tokens' logprobs not yet handed out in a Delta
        self.started = time.perf_counter()
        self.first_token_at: float | None = None

    def take(self) -> list[Delta]:
        """The Deltas produced since the last call."""
        out, self.deltas = self.deltas, []
        return out

    def accept(self, token: int, cache_full: bool) -> bool:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if token in self.end_ids:
            self.finish = "stop"
            return False
        self.n += 1
        if self.logprob is not None:
            self.logprobs.append(self.logprob)
        text = self.stops.feed(self.detokenizer.add(token), self.detokenizer.pending)
        if text:
            self.deltas.append(Delta(text, token, logprobs=self._take_logprobs()))
        if self.stops.stop is not None:
            self.finish = "stop"
            return False
        return self.n < self.params.max_new_tokens and not cache_full

    def end(self) -> None:
        # Unless a stop string ended the answer, what waited for the rest of a stop string or of a
        # character will not get it now: it is answer text.
        if self.stops.stop is None and (rest := self.stops.held + self.detokenizer.pending):
            self.deltas.append(Delta(rest, None, logprobs=self._take_logprobs()))
        self.deltas.append(Delta("", None, finish_reason=self.finish, stats=self.stats(),
                                 logprobs=self._take_logprobs(), stop=self.stops.stop))

    def _take_logprobs(self) -> list[TokenLogprob]:
        out, self.logprobs = self.logprobs, []
        return out

    def stats(self) -> GenerationStats:
        end, n = time.perf_counter(), self.n
        first = self.first_token_at if self.first_token_at is not None else end
        return GenerationStats(
            prompt_tokens=len(self.prompt_ids), completion_tokens=n, reused_tokens=self.reused,
            first_token_s=first - self.started,
            decode_tok_s=(n - 1) / (end - first) if n > 1 and end > first else 0.0,
            total_tok_s=n / (end - self.started) if end > self.started else 0.0,
            draft_acceptance=self.accepted / self.judged if self.judged else None)


def load_inference(args: argparse.Namespace) -> Inference:
    """Config and engine from parsed flags; a problem the user can fix is a UserError (one line)."""
    return Inference(InferenceConfig.from_args(args))
