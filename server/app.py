"""The FastAPI application: the routes, the guards in front of them, and the lifespan of the model thread.
Each door (server/chat.py, server/completions.py, server/responses.py, server/anthropic.py) turns its own
wire format into jobs for the one worker."""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from config import ServerOptions
from inference import Inference
from server.chat import ChatServing
from server.completions import CompletionServing
from server.errors import install_error_handlers
from server.guards import BodyLimit, HostGuard, KeyGate, allowed_hosts, cors
from server.metrics import CONTENT_TYPE, CountRequests, Metrics
from server.anthropic import MessagesServing
from server.anthropic_schema import CountTokensRequest, MessagesRequest
from server.responses import ResponsesServing
from server.responses_schema import ResponsesRequest
from server.schema import ChatCompletionRequest, CompletionRequest, ErrorResponse
from server.serving import Context
from server.worker import Worker

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 429, 503)}
# endpoints /metrics counts requests of
COUNTED = {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
           "/v1/models"}
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


def create_app(inference: Inference, model_name: str, options: ServerOptions | None = None,
               **fields: Any) -> FastAPI:
    """The app for one engine. options: api.py's flags (ServerOptions); fields override some of them, e.g.
    create_app(engine, "m", api_key="k", no_web_ui=True)."""
    opts = replace(options or ServerOptions(), **fields)
    worker = Worker(inference, opts.max_queue, watchdog_s=opts.watchdog_s)
    metrics = Metrics(worker.queued, worker.busy_slots)
    worker.observer = metrics
    ctx = Context.create(inference, worker, model_name)
    chat, legacy, responses = ChatServing(ctx), CompletionServing(ctx), ResponsesServing(ctx)
    messages = MessagesServing(ctx)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        ctx.grammars.warm()
        yield
        await asyncio.to_thread(worker.stop)
        ctx.executor.shutdown(wait=False, cancel_futures=True)

    docs = {} if opts.docs else {"docs_url": None, "redoc_url": None}
    app = FastAPI(title="qwen-ascend-llm", version="1.0", lifespan=lifespan, **docs)
    # Starlette runs the last middleware added first: CORS, the Host, the key, then the body's size and pace.
    app.add_middleware(BodyLimit, max_bytes=int(opts.max_request_mb * (1 << 20)), timeout_s=opts.body_timeout_s)
    app.add_middleware(CountRequests, metrics=metrics, endpoints=COUNTED)
    if opts.api_key is not None:
        app.add_middleware(KeyGate, api_key=opts.api_key)
    hosts = allowed_hosts(opts.host, opts.allowed_hosts)
    if hosts is not None:
        app.add_middleware(HostGuard, allowed=hosts)
    # Outermost: a preflight carries no API key, and a refusal below must still reach an allowed page.
    app.add_middleware(cors, allowed_origins=opts.allowed_origins)
    install_error_handlers(app)
    app.state.worker = worker
    app.state.metrics = metrics
    if not opts.no_web_ui:
        _add_web_ui(app)

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": started, "owned_by": "qwen-ascend-llm"}

    @app.get("/health")
    async def health() -> JSONResponse:
        status = worker.status()
        return JSONResponse(status, status_code=200 if status["status"] == "ok" else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        # Open like /health: counts and timings only, nothing of any request's content.
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", responses=ERRORS)
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}", responses=ERRORS)
    async def model(model: str) -> dict:
        ctx.check_model(model)
        return model_card()

    @app.post("/v1/chat/completions", responses=ERRORS)
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        return await chat(req, request)

    @app.post("/v1/completions", responses=ERRORS)
    async def completions(req: CompletionRequest, request: Request) -> Response:
        return await legacy(req, request)

    @app.post("/v1/responses", responses=ERRORS)
    async def create_response(req: ResponsesRequest, request: Request) -> Response:
        return await responses(req, request)

    @app.post("/v1/messages", responses=ERRORS)
    async def anthropic_messages(req: MessagesRequest, request: Request) -> Response:
        return await messages(req, request)

    @app.post("/v1/messages/count_tokens", responses=ERRORS)
    async def anthropic_count_tokens(req: CountTokensRequest) -> Response:
        return await messages.count_tokens(req)

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

