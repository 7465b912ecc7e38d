"""The legacy text endpoint, POST /v1/completions: raw prompts (no chat template), n choices each, the
prompt echoed on request, and logprobs in the legacy shape. The response object is text_completion,
streamed in the same shape."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from starlette.requests import Request

from inference import SamplingParams
from server import options
from server.errors import APIError
from server.logprobs import TokenText, legacy
from server.prompt import sampling
from server.schema import CompletionRequest
from server.worker import DONE, Job, next_event

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


@dataclass
class Plan:
    texts: list[str]
    n: int
    params: SamplingParams
    echo: bool
    logprobs: int | None


def _texts(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if not prompt:
        raise APIError(400, "prompt is an empty list: send a string or a list of strings", param="prompt")
    raise APIError(400, "prompt as token ids is not supported: send a string or a list of strings",
                   param="prompt", code="unsupported_parameter")


def plan(req: CompletionRequest, base: SamplingParams, max_output: int, vocab_size: int) -> Plan:
    options.refuse_unknown(req)
    if req.suffix:
        raise APIError(400, "suffix is not supported: this model completes after the prompt only (insertion "
                            "needs a fill-in-the-middle prompt)", param="suffix", code="unsupported_parameter")
    n = options.choices(req.n)
    if req.best_of not in (None, 1, n):
        raise APIError(400, "best_of is not supported: every choice generated is returned (use n)",
                       param="best_of", code="unsupported_parameter")
    logprobs = options.legacy_logprobs(req.logprobs)
    if req.echo and logprobs is not None:
        raise APIError(400, "echo with logprobs is not supported: the prompt's own logprobs are not computed",
                       param="echo", code="unsupported_parameter")
    texts = _texts(req.prompt)
    if req.max_tokens is None:
        req = req.model_copy(update={"max_tokens": min(DEFAULT_MAX_TOKENS, max_output)})
    params = options.apply(req, sampling(req, base, max_output), vocab_size, logprobs)
    return Plan(texts, n, params, bool(req.echo), logprobs)


def usage(stats: list[Any], n: int) -> dict:
    """Each prompt counts once (its first choice's stats), every choice's tokens count."""
    known = [s for s in stats if s is not None]
    prompt = sum(s.prompt_tokens for i, s in enumerate(stats) if s is not None and i % n == 0)
    completion = sum(s.completion_tokens for s in known)
    reused = sum(s.reused_tokens for i, s in enumerate(stats) if s is not None and i % n == 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": reused}}


class Builder:
    """The text_completion objects of one request, and each choice's progress."""

    def __init__(self, model: str, plan: Plan, words: TokenText) -> None:
        self.id = "cmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model, self.plan, self.words = model, plan, words
        count = len(plan.texts) * plan.n
        self.texts: list[list[str]] = [[self.prompt(i)] if plan.echo else [] for i in range(count)]
        self.offsets = [0] * count  # characters of text a choice's logprobs have covered
        self.stats: list[Any] = [None] * count
        self.reasons: list[str | None] = [None] * count

    def prompt(self, choice: int) -> str:
        return self.plan.texts[choice // self.plan.n]

    def logprobs(self, choice: int, entries: list) -> dict | None:
        if self.plan.logprobs is None:
            return None
        out = legacy(entries, self.words, self.offsets[choice])
        self.offsets[choice] += sum(len(t) for t in out["tokens"])
        return out

    def body(self, choices: list[dict], with_usage: bool = False) -> dict:
        out = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
               "system_fingerprint": "qwen-ascend-llm", "choices": choices}
        if with_usage:
            out["usage"] = usage(self.stats, self.plan.n)
        return out

    @staticmethod
    def choice(index: int, text: str, logprobs: dict | None, reason: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}


async def collect(job: Job, event: Any, out: Builder, request: Request) -> dict:
    entries: list[list] = [[] for _ in out.texts]
    try:
        while event is not DONE:
            if isinstance(event, APIError):
                raise event
            i, delta = event
            out.texts[i].append(delta.text)
            entries[i] += delta.logprobs
            if delta.finish_reason:
                out.reasons[i], out.stats[i] = delta.finish_reason, delta.stats
            event = await next_event(job, request)
    finally:
        job.cancel.set()  # a no-op once finished; stops the model if we leave early
    choices = [out.choice(i, "".join(t), out.logprobs(i, entries[i]), out.reasons[i] or "stop")
               for i, t in enumerate(out.texts)]
    return out.body(choices, with_usage=True)


async def stream(job: Job, event: Any, out: Builder, include_usage: bool) -> AsyncIterator[dict]:
    def data(body: dict) -> dict:
        return {"data": json.dumps(body, ensure_ascii=False)}

    try:
        if out.plan.echo:
            for i in range(len(out.texts)):
                yield data(out.body([out.choice(i, out.prompt(i), None, None)]))
        while event is not DONE:
            if isinstance(event, APIError):
                yield data(event.body())  # headers are gone: in-band, as OpenAI does
                return
            i, delta = event
            if delta.finish_reason:
                out.reasons[i], out.stats[i] = delta.finish_reason, delta.stats
            if delta.text or delta.logprobs or delta.finish_reason:
                yield data(out.body([out.choice(i, delta.text, out.logprobs(i, delta.logprobs), delta.finish_reason)]))
            event = await job.events.get()
        if include_usage:
            yield data({**out.body([]), "usage": usage(out.stats, out.plan.n)})
        yield {"data": "[DONE]"}
    finally:
        job.cancel.set()
