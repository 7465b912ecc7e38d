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
from server.errors import APIError, BodyLimit, install_error_handlers
from server.prompt import plan
from server.response import Builder
from server.schema import ChatCompletionRequest, ErrorResponse
from server.toolcall.stream import PlainStream
from server.worker import DONE, Job, Worker

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 503)}
DISCONNECT_POLL_S = 0.5
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


async def _next_event(job: Job, request: Request) -> Any:
    """The worker's next event. Every DISCONNECT_POLL_S (also while tokens keep coming) we look whether
    the client hung up, and if so cancel its job: nothing else tells a non-streaming handler."""
    while True:
        now = time.monotonic()
        if now - job.checked_at >= DISCONNECT_POLL_S:
            job.checked_at = now
            if await request.is_disconnected():
                job.cancel.set()
                raise APIError(400, "client disconnected", code="client_disconnected")
        try:
            return await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            continue


def create_app(inference: Inference, model_name: str, api_key: str | None = None, max_queue: int = 64,
               max_body_bytes: int = 1 << 20, web_ui: bool = True) -> FastAPI:
    config = inference.config
    worker = Worker(inference, max_queue, config.generation.max_input_length)
    base = SamplingParams.from_config(config)
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
    install_error_handlers(app)
    app.state.worker = worker
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

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **worker.status()}

    @app.get("/v1/models", dependencies=[Depends(authorize)], responses=ERRORS)
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}", dependencies=[Depends(authorize)], responses=ERRORS)
    async def model(model: str) -> dict:
        if model != model_name:
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{model_name}'.",
                           code="model_not_found", param="model")
        return model_card()

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], responses=ERRORS)
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        if req.model is not None and req.model != model_name:
            raise APIError(404, f"The model '{req.model}' does not exist; this server serves '{model_name}'.",
                           code="model_not_found", param="model")
        p = plan(req, base, config.generation.max_output_length, grammars)
        job = Job(p.messages, p.mode.tools, p.params, asyncio.get_running_loop())
        worker.submit(job)
        try:
            first = await _next_event(job, request)
        except BaseException:
            job.cancel.set()
            raise
        if isinstance(first, APIError):
            raise first
        builder = Builder(model_name, p.mode)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = _sse(job, first, builder, p.mode.reader(), include_usage)
            return EventSourceResponse(events, sep="\n", ping=15)
        return JSONResponse(await _collect(job, first, builder, p.mode.reader(), request))

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


async def _collect(job: Job, event: Any, builder: Builder, reader: PlainStream, request: Request) -> dict:
    content, last = [], None
    try:
        while event is not DONE:
            if isinstance(event, APIError):
                raise event
            content.append(reader.feed(event.text))
            last = event if event.finish_reason else last
            event = await _next_event(job, request)
    finally:
        job.cancel.set()  # a no-op once finished; stops the model if we leave early
    tail, calls = reader.finish()
    return builder.completion("".join(content) + tail, calls, last and last.finish_reason, last and last.stats)


async def _sse(job: Job, event: Any, builder: Builder, reader: PlainStream,
               include_usage: bool) -> AsyncIterator[dict]:
    def data(body: dict) -> dict:
        return {"data": json.dumps(body, ensure_ascii=False)}

    last = None
    try:
        yield data(builder.chunk({"role": "assistant", "content": ""}, with_usage=include_usage))
        while event is not DONE:
            if isinstance(event, APIError):
                # Headers are gone already: report the failure in-band, as OpenAI does, and end.
                yield data(event.body())
                return
            text = reader.feed(event.text)
            if text:
                yield data(builder.chunk({"content": text}, with_usage=include_usage))
            last = event if event.finish_reason else last
            event = await job.events.get()
        tail, calls = reader.finish()
        if tail:
            yield data(builder.chunk({"content": tail}, with_usage=include_usage))
        for chunk in builder.closing_chunks(calls, last and last.finish_reason, include_usage):
            yield data(chunk)
        if include_usage:
            yield data(builder.usage_chunk(last and last.stats))
        yield {"data": "[DONE]"}
    finally:
        job.cancel.set()  # the client hung up (or we finished): the worker stops between tokens
