"""POST /v1/completions, the legacy text endpoint: raw prompts (no chat template), n choices each, the prompt
echoed on request, and logprobs in the legacy shape. The response object is text_completion, streamed in the
same shape."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from inference import Delta, SamplingParams
from server.errors import APIError
from server.fields import check_fields
from server.logprobs import legacy
from server.params import Knobs, choices, legacy_logprobs, sampling_params
from server.schema import CompletionRequest
from server.serving import Context, data, gbnf, usage
from server.worker import Job

ENDPOINT = "/v1/completions"
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
# Generations one request may ask for (prompts x n). A request beyond it would hold the slots for a long time
# while others wait; 64 is 16 times the CPU server's 4 slots, enough for a batch of prompts from a harness.
MAX_GENERATIONS = 64


@dataclass
class Plan:
    texts: list[str]
    n: int
    params: SamplingParams
    echo: bool
    logprobs: int | None
    grammar: str | None  # the GBNF grammar's compiled form, when the request sends one


def _texts(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if not prompt:
        raise APIError(400, "prompt is an empty list: send a string or a list of strings", param="prompt")
    raise APIError(400, "prompt as token ids is not supported: send a string or a list of strings",
                   param="prompt", code="unsupported_parameter")


def plan(req: CompletionRequest, ctx: Context) -> Plan:
    check_fields(req, ENDPOINT)
    n = choices(req.n)
    if req.best_of not in (None, 1, n):
        raise APIError(400, "best_of is not supported: every choice generated is returned (use n)",
                       param="best_of", code="unsupported_parameter")
    logprobs = legacy_logprobs(req.logprobs)
    if req.echo and logprobs is not None:
        raise APIError(400, "echo with logprobs is not supported: the prompt's own logprobs are not computed",
                       param="echo", code="unsupported_parameter")
    texts = _texts(req.prompt)
    if len(texts) * n > MAX_GENERATIONS:
        raise APIError(400, f"This server generates at most {MAX_GENERATIONS} completions per request (prompts "
                            f"times n); this one asks for {len(texts)} x {n}.", param="prompt", code="invalid_value")
    max_tokens = req.max_tokens if req.max_tokens is not None else min(DEFAULT_MAX_TOKENS, ctx.max_output)
    knobs = Knobs.from_openai(req, max_tokens=max_tokens, logprobs=logprobs)
    params = sampling_params(knobs, ctx.base, ctx.max_output, ctx.vocab_size)
    return Plan(texts, n, params, bool(req.echo), logprobs, None if req.grammar is None else gbnf(req.grammar))


def _tokens(ctx: Context, texts: list[str]) -> list[list[int]]:
    out = []
    for i, text in enumerate(texts):
        ids = ctx.inference.tokenizer.encode(text, add_special_tokens=False)
        where = f"prompt[{i}]" if len(texts) > 1 else "prompt"
        if not ids:
            raise APIError(400, f"{where} is empty: there is nothing to complete", param="prompt")
        ctx.check_length(len(ids), f"{where} is", "prompt")
        out.append(ids)
    return out


class CompletionServing:
    """The legacy text door."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def __call__(self, req: CompletionRequest, request: Request) -> Response:
        ctx = self.ctx
        ctx.check_model(req.model)
        c = plan(req, ctx)

        def prepare() -> list[list[int]]:
            if c.grammar is not None:
                c.params.processors = c.params.processors + [ctx.constraint(c.grammar, "grammar")]
            return _tokens(ctx, c.texts)

        prompts = await ctx.prepare(prepare)
        job = Job(prompts, c.params, asyncio.get_running_loop(), n=c.n)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        answer = CompletionAnswer(ctx, c, bool(req.stream), include_usage)
        return await ctx.answer(job, answer, bool(req.stream), request)


class CompletionAnswer:
    """The text_completion objects of one request, and each choice's progress."""

    def __init__(self, ctx: Context, plan: Plan, streaming: bool, include_usage: bool) -> None:
        self.id = "cmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model, self.plan, self.words = ctx.model_name, plan, ctx.words
        self.streaming, self.include_usage = streaming, include_usage
        count = len(plan.texts) * plan.n
        self.texts: list[list[str]] = [[self._prompt(i)] if plan.echo else [] for i in range(count)]
        self.entries: list[list] = [[] for _ in range(count)]
        self.offsets = [0] * count  # characters of text a choice's logprobs have covered
        self.stats: list[Any] = [None] * count
        self.reasons: list[str | None] = [None] * count

    def _prompt(self, choice: int) -> str:
        return self.plan.texts[choice // self.plan.n]

    def _logprobs(self, choice: int, entries: list) -> dict | None:
        if self.plan.logprobs is None:
            return None
        out = legacy(entries, self.words, self.offsets[choice])
        self.offsets[choice] += sum(len(t) for t in out["tokens"])
        return out

    def _body(self, choices: list[dict], with_usage: bool = False) -> dict:
        out = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
               "system_fingerprint": "qwen-ascend-llm", "choices": choices}
        if with_usage:
            out["usage"] = usage(self.stats, self.plan.n)
        return out

    @staticmethod
    def _choice(index: int, text: str, logprobs: dict | None, reason: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def opening(self) -> list[dict]:
        if not self.plan.echo:
            return []
        return [data(self._body([self._choice(i, self._prompt(i), None, None)])) for i in range(len(self.texts))]

    def feed(self, i: int, delta: Delta) -> list[dict]:
        if delta.finish_reason:
            self.reasons[i], self.stats[i] = delta.finish_reason, delta.stats
        if not self.streaming:
            self.texts[i].append(delta.text)
            self.entries[i] += delta.logprobs
            return []
        if not (delta.text or delta.logprobs or delta.finish_reason):
            return []
        logprobs = self._logprobs(i, delta.logprobs)
        return [data(self._body([self._choice(i, delta.text, logprobs, delta.finish_reason)]))]

    def closing(self) -> list[dict]:
        out = [data({**self._body([]), "usage": usage(self.stats, self.plan.n)})] if self.include_usage else []
        return out + [{"data": "[DONE]"}]

    def error_event(self, error: APIError) -> dict:
        return data(error.body())

    def result(self) -> dict:
        choices = [self._choice(i, "".join(t), self._logprobs(i, self.entries[i]), self.reasons[i] or "stop")
                   for i, t in enumerate(self.texts)]
        return self._body(choices, with_usage=True)
