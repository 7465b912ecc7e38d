"""ASGI middleware that stands between the network and the routes, each answering in OpenAI's error shape
before anything is parsed:

- cors: pages on loopback origins (and those --allowed_origins names) may call the API from a browser;
  a page on any other origin gets no grant, so the browser keeps the answer from it;
- HostGuard: a server bound to loopback refuses a Host that is not a loopback name, so a page on another
  site cannot reach it through DNS rebinding (its Host would be the attacker's name);
- KeyGate: the API key is checked from the headers, before the body is read, so an unauthenticated client
  cannot make the server read (or wait for) a body;
- BodyLimit: a body over the limit is refused (413) and one that stops arriving is refused (408), so that
  neither memory nor a connection is held by a client that sends slowly or never."""
from __future__ import annotations

import asyncio
import secrets

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
LOOPBACK_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"


def cors(app: ASGIApp, allowed_origins: str | None) -> ASGIApp:
    """Starlette's CORS middleware granting the loopback origins and those named (or every origin for '*')."""
    extra = [o.strip().rstrip("/") for o in (allowed_origins or "").split(",") if o.strip()]
    return CORSMiddleware(app, allow_origins=["*"] if "*" in extra else extra, allow_origin_regex=LOOPBACK_ORIGINS,
                          allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"], max_age=600)


def host_name(header: str) -> str:
    """The host of a Host header, without its port: "[::1]:8000" -> "[::1]", "localhost:80" -> "localhost"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback_bind(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def allowed_hosts(bind: str, extra: str | None) -> frozenset[str] | None:
    """The Host names to answer (--allowed_hosts adds to the loopback ones); None: any, because the server is
    not bound to loopback, or '*' was given."""
    names = {h.strip().lower() for h in (extra or "").split(",") if h.strip()}
    if not is_loopback_bind(bind) or "*" in names:
        return None
    return LOOPBACK_HOSTS | names


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


class HostGuard:
    """Refuse (400) a request whose Host is not one of `allowed` (names without ports)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and host_name(_header(scope, b"host")) not in self.allowed:
            error = APIError(400, "Invalid Host header: this server, bound to loopback, answers only requests "
                                  "addressed to a loopback name (--allowed_hosts adds others).",
                             code="invalid_host")
            await error.response(scope["path"])(scope, receive, send)
            return
        await self.app(scope, receive, send)


class KeyGate:
    """Every path under /v1/ needs the key, as 'Authorization: Bearer <key>' (OpenAI's clients) or as
    'x-api-key: <key>' (Anthropic's); checked in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    def authorized(self, scope: Scope) -> bool:
        scheme, _, token = _header(scope, b"authorization").partition(" ")
        bearer = scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode("latin-1"), self.key)
        header = _header(scope, b"x-api-key")
        return bearer or (bool(header) and secrets.compare_digest(header.strip().encode("latin-1"), self.key))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and not self.authorized(scope):
            error = APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>' or "
                                  "'x-api-key: <key>'.",
                             code="invalid_api_key")
            await error.response(scope["path"])(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """A request body over max_bytes is refused with 413 before anything parses it; bodies without
    Content-Length are counted as they arrive. A body whose next part takes over timeout_s is refused with
    408."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, more=True)
            return
        chunks: list[Message] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                error = APIError(408, f"The request body did not arrive within {self.timeout_s:g} s.",
                                 code="request_timeout")
                await error.response(scope["path"])(scope, receive, send)
                return
            if message["type"] != "http.request":
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, more=message.get("more_body", False))
                return
            chunks.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            # the buffered body first, then whatever the server sends next (a disconnect)
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, more: bool) -> None:
        # Read (and drop) the rest of the body, up to a bound in size and time: a client still sending when
        # we answer would see a reset connection instead of our 413.
        drained = 0
        try:
            while more and drained < 16 * self.max_bytes:
                message = await asyncio.wait_for(receive(), self.timeout_s)
                drained += len(message.get("body", b""))
                more = message["type"] == "http.request" and message.get("more_body", False)
        except asyncio.TimeoutError:
            pass
        error = APIError(413, f"The request body is larger than this server accepts ({self.max_bytes} bytes).",
                         code="request_too_large")
        await error.response(scope["path"])(scope, receive, send)
