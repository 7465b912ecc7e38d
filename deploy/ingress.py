"""Ingress: the HTTP front of the Ray Serve application. It reads a request, names its conversation
(deploy/conversation.py) and relays it to a model replica (deploy/replica.py) through a deployment handle,
whose ConversationRouter (deploy/router.py) picks the replica; the replica's answer streams back unchanged.

When a replica dies (Ray restarts it):
- a request waiting in Ray's router for a free replica is routed to a live one by Ray;
- a request the dead replica had taken but not yet answered (no response header sent: it may have been
  queued there, or decoding a non-streamed answer) is sent again to another replica, once: the client
  sees nothing of the first attempt;
- a request whose answer had started (a stream under way) ends with OpenAI's error object, status 503
  before the headers, else as a last SSE event, as server/app.py reports an error mid-stream.
"""
from __future__ import annotations

import json
import logging
from typing import AsyncIterator

from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from deploy.conversation import conversation_key
from server.errors import APIError

log = logging.getLogger("ray.serve")
ATTEMPTS = 2


def replica_lost() -> APIError:
    return APIError(503, "The replica serving this request stopped; send the request again.",
                    code="replica_unavailable")


class Ingress:
    def __init__(self, replicas: DeploymentHandle, max_body_bytes: int) -> None:
        self.replicas = replicas.options(stream=True)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> Response:
        body = await self._body(request)
        scope = _plain_scope(request)
        key = conversation_key(scope["path"], body)
        for attempt in range(ATTEMPTS):
            stream: DeploymentResponseGenerator = self.replicas.forward.remote(scope, body, conversation=key)
            try:
                start = await stream.__anext__()
                first = await stream.__anext__()  # with it, the answer has begun: no second attempt after this
            except RayActorError as e:
                stream.cancel()
                log.warning("replica lost before answering (attempt %d of %d): %s", attempt + 1, ATTEMPTS, e)
                continue
            except StopAsyncIteration:  # the replica ended the answer before it began: a bug, not a lost replica
                log.error("replica sent no answer")
                return _internal_error()
            except Exception:
                stream.cancel()
                log.exception("relaying to a replica failed")
                return _internal_error()
            except BaseException:
                stream.cancel()
                raise
            response = StreamingResponse(_relay(stream, first, _is_event_stream(start)), status_code=start["status"])
            response.raw_headers = list(start["headers"])  # the replica's own headers, content-length included
            return response
        return replica_lost().response()

    async def _body(self, request: Request) -> bytes:
        """The body, cut one byte past the limit: the replica's own check then answers 413 as api.py does."""
        chunks, size = [], 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:
                break
        return b"".join(chunks)[: self.max_body_bytes + 1]


async def _relay(stream: DeploymentResponseGenerator, first: dict, event_stream: bool) -> AsyncIterator[bytes]:
    message = first
    try:
        while True:
            if message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return
            message = await stream.__anext__()
    except StopAsyncIteration:
        return
    except RayActorError as e:
        log.warning("replica lost while answering: %s", e)
        if event_stream:
            yield f"data: {json.dumps(replica_lost().body())}\n\n".encode()
    finally:
        stream.cancel()  # a no-op once the replica finished; else the client left and the replica stops


def _internal_error() -> Response:
    return APIError(500, "The server had an error while processing your request.", type="server_error").response()


def _is_event_stream(start: dict) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in start["headers"])


def _plain_scope(request: Request) -> dict:
    """The request's ASGI scope without its live objects (app, router, state), so it pickles."""
    s = request.scope
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": s.get("http_version", "1.1"),
            "method": s["method"], "scheme": s.get("scheme", "http"), "path": s["path"],
            "raw_path": s.get("raw_path") or s["path"].encode(), "query_string": s.get("query_string", b""),
            "root_path": "", "headers": list(s["headers"]), "client": tuple(s["client"]) if s.get("client") else None,
            "server": tuple(s["server"]) if s.get("server") else None}
