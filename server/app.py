"""The FastAPI application: routes, authentication, and the bridge between requests and the worker."""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sse_starlette import EventSourceResponse

from engine.constraint import Grammars
from inference import Inference, SamplingParams
from server import completions, options
from server.errors import APIError, BodyLimit, install_error_handlers
from server.logprobs import TokenText, chat_logprobs
from server.metrics import CONTENT_TYPE, CountRequests, Metrics
from server.modes import Mode
from server.prompt import plan
from server.response import Builder
from server.schema import ChatCompletionRequest, CompletionRequest, ErrorResponse
from server.worker import DONE, Job, Worker, next_event

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 503)}
COUNTED = {"/v1/chat/completions", "/v1/completions", "/v1/models"}  # endpoints /metrics counts requests of
WEB_DIR = Path(__file__).resolve().parent / "web"
# The chat page shows model output, which is untrusted: it renders it as text, and this policy is the second
# line of defence (no inline script or style, no other origin, nothing may frame the page).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def create_app(inference: Inference, model_name: str, api_key: str | None = None, max_queue: int = 64,
               max_body_bytes: int = 1 << 20, web_ui: bool = True) -> FastAPI:
    config = inference.config
    worker = Worker(inference, max_queue, config.generation.max_input_length)
    metrics = Metrics(worker.queued, lambda: min(worker.busy_slots(), worker.slots))
    worker.observer = metrics
    base = SamplingParams.from_config(config)
    vocab_size = config.shape.vocab_size
    words = TokenText(inference.tokenizer)
    grammars = Grammars(inference.tokenizer, inference.eos_token_ids)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        grammars.warm()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="qwen-ascend-llm", version="1.0", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(CountRequests, metrics=metrics, endpoints=COUNTED)
    install_error_handlers(app)
    app.state.worker = worker
    app.state.metrics = metrics
    if web_ui:
        _add_web_ui(app)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": started, "owned_by": "qwen-ascend-llm"}

    def check_model(model: str | None) -> None:
        if model is not None and model != model_name:
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{model_name}'.",
                           code="model_not_found", param="model")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **worker.status()}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        # Open like /health: counts and timings only, nothing of any request's content.
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=[Depends(authorize)], responses=ERRORS)
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}", dependencies=[Depends(authorize)], responses=ERRORS)
    async def model(model: str) -> dict:
        check_model(model)
        return model_card()

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], responses=ERRORS)
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        check_model(req.model)
        options.refuse_unknown(req)
        n = options.choices(req.n)
        logprobs = options.chat_logprobs(req.logprobs, req.top_logprobs)
        p = plan(req, base, config.generation.max_output_length, grammars)
        options.apply(req, p.params, vocab_size, logprobs)
        job = Job(p.messages, p.mode.tools, p.params, asyncio.get_running_loop(), n=n)
        first = await start(job, request)
        builder = Builder(model_name, p.mode)
        answer = _Answer(builder, p.mode, n, words if logprobs is not None else None)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventSourceResponse(_sse(job, first, answer, include_usage), sep="\n", ping=15)
        return JSONResponse(await _collect(job, first, answer, request))

    @app.post("/v1/completions", dependencies=[Depends(authorize)], responses=ERRORS)
    async def legacy_completions(req: CompletionRequest, request: Request) -> Any:
        check_model(req.model)
        c = completions.plan(req, base, config.generation.max_output_length, vocab_size)
        job = Job([], None, c.params, asyncio.get_running_loop(), n=c.n, texts=c.texts)
        first = await start(job, request)
        out = completions.Builder(model_name, c, words)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventSourceResponse(completions.stream(job, first, out, include_usage), sep="\n", ping=15)
        return JSONResponse(await completions.collect(job, first, out, request))

    async def start(job: Job, request: Request) -> Any:
        """Queue the job and wait for its first event; an error before any answer is the response."""
        worker.submit(job)
        try:
            first = await next_event(job, request)
        except BaseException:
            job.cancel.set()
            raise
        if isinstance(first, APIError):
            raise first
        return first

    return app


def _add_web_ui(app: FastAPI) -> None:
    """GET / is the chat page (server/web/); its script and style are under /web/. Neither needs the API key:
    the page holds no data, and each model call it makes sends the key like any other client."""
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/web", _WebFiles(directory=WEB_DIR), name="web")


class _WebFiles(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


class _Answer:
    """A chat answer's n choices as they stream in: each with its own reader of the mode's format, its
    logprobs not yet sent (when asked for: `words` is then set), and its last Delta."""

    def __init__(self, builder: Builder, mode: Mode, n: int, words: TokenText | None) -> None:
        self.builder, self.words = builder, words
        self.readers = [mode.reader() for _ in range(n)]
        self.texts: list[list[str]] = [[] for _ in range(n)]
        self.logprobs: list[list] = [[] for _ in range(n)]
        self.last: list[Any] = [None] * n

    def take_logprobs(self, i: int) -> dict | None:
        if self.words is None:
            return None
        out, self.logprobs[i] = self.logprobs[i], []
        return chat_logprobs(out, self.words)

    def stats(self) -> list[Any]:
        return [d and d.stats for d in self.last]


async def _collect(job: Job, event: Any, answer: _Answer, request: Request) -> dict:
    try:
        while event is not DONE:
            if isinstance(event, APIError):
                raise event
            i, delta = event
            answer.texts[i].append(answer.readers[i].feed(delta.text))
            answer.logprobs[i] += delta.logprobs
            answer.last[i] = delta if delta.finish_reason else answer.last[i]
            event = await next_event(job, request)
    finally:
        job.cancel.set()  # a no-op once finished; stops the model if we leave early
    choices = []
    for i, reader in enumerate(answer.readers):
        tail, calls = reader.finish()
        last = answer.last[i]
        choices.append(answer.builder.choice(i, "".join(answer.texts[i]) + tail, calls, last and last.finish_reason,
                                             answer.take_logprobs(i)))
    return answer.builder.completion(choices, answer.stats())


async def _sse(job: Job, event: Any, answer: _Answer, include_usage: bool) -> AsyncIterator[dict]:
    def data(body: dict) -> dict:
        return {"data": json.dumps(body, ensure_ascii=False)}

    builder = answer.builder
    try:
        for i in range(len(answer.readers)):
            yield data(builder.chunk({"role": "assistant", "content": ""}, with_usage=include_usage, index=i))
        while event is not DONE:
            if isinstance(event, APIError):
                # Headers are gone already: report the failure in-band, as OpenAI does, and end.
                yield data(event.body())
                return
            i, delta = event
            answer.logprobs[i] += delta.logprobs
            text = answer.readers[i].feed(delta.text)
            if text:
                yield data(builder.chunk({"content": text}, with_usage=include_usage, index=i,
                                         logprobs=answer.take_logprobs(i)))
            if delta.finish_reason:
                answer.last[i] = delta
                tail, calls = answer.readers[i].finish()
                if tail or answer.logprobs[i]:  # text the reader held, or tokens that showed no text
                    yield data(builder.chunk({"content": tail}, with_usage=include_usage, index=i,
                                             logprobs=answer.take_logprobs(i)))
                for chunk in builder.closing_chunks(calls, delta.finish_reason, include_usage, index=i):
                    yield data(chunk)
            event = await job.events.get()
        if include_usage:
            yield data(builder.usage_chunk(answer.stats()))
        yield {"data": "[DONE]"}
    finally:
        job.cancel.set()  # the client hung up (or we finished): the worker stops between tokens
