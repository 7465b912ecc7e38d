"""What every door shares: the model's context (tokenizer, template, limits, the worker), the preparation of
a request off the event loop, and the two ways an answer leaves, collected into one body or streamed as
server-sent events. A door (server/chat.py, server/completions.py) translates its wire format into a Job and
the job's events back through an Answer; nothing here knows any wire format."""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Protocol, Sequence, TypeVar

from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from engine.constraint import ConstraintError, GrammarConstraint, GrammarError, Grammars, gbnf_grammar
from inference import Delta, Inference, SamplingParams
from server.errors import APIError
from server.logprobs import TokenText
from server.worker import DONE, Job, Worker, next_event

PING_S = 15  # an SSE comment this often keeps a waiting stream's connection open through proxies
PREPARE_WORKERS = 2  # requests rendered, tokenized and compiled at once, beside the model thread
PREPARE_TIMEOUT_S = 30.0
T = TypeVar("T")


class Answer(Protocol):
    """One request's answer as its door writes it, fed the job's events in order."""

    def opening(self) -> list[dict]:
        """Stream events sent before any token (a role, an echoed prompt, a message_start)."""

    def feed(self, index: int, delta: Delta) -> list[dict]:
        """Take choice `index`'s next Delta; return the stream events it makes (ignored when collecting)."""

    def closing(self) -> list[dict]:
        """Stream events after the last Delta (usage, the end marker)."""

    def error_event(self, error: APIError) -> dict:
        """A failure after the stream started, in the door's in-band shape."""

    def result(self) -> dict:
        """The whole answer, once every Delta was fed."""


def data(body: Any) -> dict:
    """One server-sent event carrying body as JSON."""
    return {"data": json.dumps(body, ensure_ascii=False)}


def usage(stats: Sequence[Any], n: int) -> dict:
    """OpenAI's usage from each choice's last GenerationStats (None for a choice that ended without one):
    each prompt counts once, from the first of its n choices that has stats; every choice's tokens count."""
    prompt = reused = 0
    for p in range(0, len(stats), n):
        first = next((s for s in stats[p:p + n] if s is not None), None)
        if first is not None:
            prompt += first.prompt_tokens
            reused += first.reused_tokens
    completion = sum(s.completion_tokens for s in stats if s is not None)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": reused}}


def gbnf(text: str) -> str:
    """llama.cpp's `grammar` field as a grammar; a 400 naming it when llguidance cannot convert it."""
    try:
        return gbnf_grammar(text)
    except GrammarError as e:
        raise APIError(400, str(e), code="invalid_grammar", param="grammar") from None


@dataclass
class Context:
    """The model and the server's settings, as every door needs them."""
    inference: Inference
    worker: Worker
    model_name: str
    base: SamplingParams
    grammars: Grammars
    words: TokenText
    max_output: int
    max_input: int
    executor: ThreadPoolExecutor

    @classmethod
    def create(cls, inference: Inference, worker: Worker, model_name: str) -> "Context":
        config = inference.config
        return cls(inference, worker, model_name, SamplingParams.from_config(config),
                   Grammars(inference.tokenizer, inference.eos_token_ids), TokenText(inference.tokenizer),
                   config.generation.max_output_length, config.generation.max_input_length,
                   ThreadPoolExecutor(PREPARE_WORKERS, thread_name_prefix="prepare"))

    @property
    def vocab_size(self) -> int:
        return self.inference.config.shape.vocab_size

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"The model '{model[:200]}' does not exist; this server serves "
                                f"'{self.model_name}'.", code="model_not_found", param="model")

    def constraint(self, grammar: str, param: str, check: bool = True) -> GrammarConstraint:
        """A request's output constraint; check: its matcher made and first mask computed now, on the calling
        (preparing) thread, so that a grammar that compiles but cannot run is a 400 before the engine."""
        try:
            return self.grammars.checked_constraint(grammar) if check else self.grammars.constraint(grammar)
        except ConstraintError as e:
            raise APIError(400, f"The output constraint cannot be used: {e}", code="invalid_schema",
                           param=param) from None

    def check_length(self, tokens: int, what: str, param: str) -> None:
        """A 400 for a prompt over --max_input_length."""
        if tokens > self.max_input:
            raise APIError(400, f"This model's maximum prompt length is {self.max_input} tokens "
                                f"(--max_input_length); {what} {tokens} tokens.",
                           code="context_length_exceeded", param=param)

    async def prepare(self, work: Callable[[], T]) -> T:
        """Run a door's preparation (template, tokenizer, grammar) on the preparing threads, never on the
        event loop or the model thread; a preparation that takes over PREPARE_TIMEOUT_S is refused."""
        future = asyncio.get_running_loop().run_in_executor(self.executor, work)
        try:
            return await asyncio.wait_for(future, PREPARE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise APIError(400, f"The request took over {PREPARE_TIMEOUT_S:g} s to prepare (template, tokens, "
                                "grammar); send fewer or smaller tools, schemas or prompts.",
                           code="request_too_complex") from None

    async def answer(self, job: Job, answer: Answer, stream: bool, request: Request) -> Response:
        """Queue the job; stream its answer (headers go out at once, so a queued stream already gets its
        keep-alive comments), or collect it into one body."""
        self.worker.submit(job)
        if stream:
            return EventSourceResponse(_stream(job, answer), sep="\n", ping=PING_S)
        return JSONResponse(await _collect(job, answer, request))


async def _collect(job: Job, answer: Answer, request: Request) -> dict:
    try:
        while (event := await next_event(job, request)) is not DONE:
            if isinstance(event, APIError):
                raise event
            answer.feed(*event)
    finally:
        job.cancel.set()  # a no-op once finished; stops the model if we leave early
    return answer.result()


async def _stream(job: Job, answer: Answer) -> AsyncIterator[dict]:
    try:
        for event in answer.opening():
            yield event
        while (item := await next_event(job)) is not DONE:
            if isinstance(item, APIError):
                yield answer.error_event(item)  # headers are gone: the failure goes in-band
                return
            for event in answer.feed(*item):
                yield event
        for event in answer.closing():
            yield event
    finally:
        job.cancel.set()  # the client hung up (or we finished): the worker stops between tokens
