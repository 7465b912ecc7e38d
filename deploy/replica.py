"""ModelReplica: one copy of api.py's server (server/app.py create_app, unchanged) inside a Ray Serve replica.

The ingress hands each HTTP request over as an ASGI scope and its body; the replica runs the FastAPI app on
them and streams the app's ASGI messages back as they come, so routes, errors and streaming are the app's
own. Two additions: every response carries the header `x-replica-id`, and GET /health also names the
replica, its Ray actor, the NPU Ray gave it and the cores it is pinned to."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from pathlib import Path
from typing import AsyncIterator

import ray
from ray import serve

from config import CPU_SERVER_MAX_BATCH, ServerOptions
from core.flags import from_args
from inference import load_inference
from server.app import create_app

log = logging.getLogger("ray.serve")
REPLICA_HEADER = b"x-replica-id"


def pin_process(cores: set[int]) -> None:
    """Every thread of this process on `cores`; threads started later (the model's) inherit it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):
            continue  # a thread that ended meanwhile


class ModelReplica:
    async def __init__(self, args: argparse.Namespace, pin_cores: bool = False) -> None:
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        # Ray sets ASCEND_RT_VISIBLE_DEVICES to the NPU it assigned, so pyACL's device 0 (backends/acl.py) is
        # that NPU; its number on the board is reported here.
        self.npu_ids = ray.get_runtime_context().get_accelerator_ids().get("NPU", [])
        if pin_cores:
            allowed = sorted(os.sched_getaffinity(0))
            pin_process({allowed[context.rank.local_rank % len(allowed)]})
        self.cores = sorted(os.sched_getaffinity(0))
        args = argparse.Namespace(**vars(args))
        if args.max_batch is None and args.session_type != "acl":
            args.max_batch = CPU_SERVER_MAX_BATCH  # as api.py does
        server = from_args(ServerOptions, args)
        inference = await asyncio.to_thread(load_inference, args)
        name = server.served_model_name or Path(inference.config.session.hf_model_dir.rstrip("/")).name
        self.app = create_app(inference, name, server)
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()  # starts the model thread, as uvicorn would
        log.info("replica %s ready (NPU %s, cores %s)", self.replica_id, self.npu_ids, self.cores)

    async def __del__(self) -> None:
        await self._lifespan.__aexit__(None, None, None)

    async def forward(self, scope: dict, body: bytes, conversation: str | None = None) -> AsyncIterator[dict]:
        """The app's ASGI messages for one request. `conversation` is read by the router only."""
        outbox: asyncio.Queue[dict | None] = asyncio.Queue()
        hung_up = asyncio.Event()
        unread = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if unread:
                return unread.pop()
            await hung_up.wait()  # the app learns of a client that left from here
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (REPLICA_HEADER, self.replica_id.encode())]
                message = {**message, "headers": headers}
            await outbox.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception:  # the app's error handlers answered already; keep the replica serving
                log.exception("request failed")
            finally:
                outbox.put_nowait(None)

        task = asyncio.create_task(run())
        try:
            if scope["path"] == "/health" and scope["method"] == "GET":
                for message in await self._health(outbox):
                    yield message
                return
            while (message := await outbox.get()) is not None:
                yield message
        finally:
            hung_up.set()
            task.cancel()  # a no-op once the app finished; else the client left and the job stops

    async def _health(self, outbox: asyncio.Queue) -> list[dict]:
        messages = []
        while (message := await outbox.get()) is not None:
            messages.append(message)
        start, bodies = messages[0], [m for m in messages[1:] if m["type"] == "http.response.body"]
        if start["status"] != 200:
            return messages
        status = json.loads(b"".join(m.get("body", b"") for m in bodies))
        status.update(replica_id=self.replica_id, replica_actor=ray.get_runtime_context().get_actor_name(),
                      npu_ids=self.npu_ids, cores=self.cores)
        body = json.dumps(status).encode()
        headers = [(k, str(len(body)).encode() if k.lower() == b"content-length" else v)
                   for k, v in start["headers"]]
        return [{**start, "headers": headers}, {"type": "http.response.body", "body": body, "more_body": False}]
