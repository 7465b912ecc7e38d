"""One thread owns the model; requests wait in a bounded queue and are served one at a time.
Results travel back to the event loop through an asyncio.Queue fed with call_soon_threadsafe, so the
loop never blocks on the model, and a cancel flag set by the loop stops a generation between tokens."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from inference import Inference, PromptTooLongError, SamplingParams
from server.errors import APIError

log = logging.getLogger("api")
DONE = object()  # the last event of every job


@dataclass
class Job:
    messages: list[dict]
    tools: list[dict] | None
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    checked_at: float = field(default_factory=time.monotonic)  # last look for a client disconnect

    def emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:
            self.cancel.set()  # the loop is gone (shutdown): nobody is listening any more


class Worker:
    def __init__(self, inference: Inference, max_queue: int, max_input_length: int) -> None:
        self.inference = inference
        self.max_input_length = max_input_length
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
        self._current: Job | None = None
        self.served = 0
        self.cancelled = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._current is not None:
            self._current.cancel.set()
        while True:  # drop waiting jobs so the sentinel fits in a full queue
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.emit(APIError(503, "The server is shutting down.", code="shutting_down"))
                job.emit(DONE)
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise APIError(429, f"The server is busy: {self._jobs.maxsize} requests are already waiting. "
                                "Retry shortly.", code="rate_limit_exceeded") from None

    def status(self) -> dict:
        return {"queued": self._jobs.qsize(), "busy": self._current is not None,
                "served": self.served, "cancelled": self.cancelled}

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancel.is_set():
                self.cancelled += 1  # the client left while waiting
                job.emit(DONE)
                continue
            self._current = job
            try:
                self._serve(job)
            finally:
                self._current = None
                job.emit(DONE)

    def _prompt(self, job: Job) -> list[int] | None:
        try:
            ids = self.inference.apply_chat_template(job.messages, job.tools)
        except Exception as e:  # the template rejects what the messages ask for: the client's problem
            job.emit(APIError(400, f"The messages cannot be rendered with this model's chat template: {e}",
                              param="messages"))
            return None
        if len(ids) > self.max_input_length:
            job.emit(APIError(400, f"This model's maximum prompt length is {self.max_input_length} tokens "
                                   f"(--max_input_length); your messages are {len(ids)} tokens.",
                              code="context_length_exceeded", param="messages"))
            return None
        return ids

    def _serve(self, job: Job) -> None:
        ids = self._prompt(job)
        if ids is None:
            return
        gen = self.inference.stream(ids, job.params)
        try:
            for delta in gen:
                job.emit(delta)
                if job.cancel.is_set():
                    self.cancelled += 1
                    return
            self.served += 1
        except PromptTooLongError as e:
            job.emit(APIError(400, str(e), code="context_length_exceeded", param="messages"))
        except Exception:
            log.exception("generation failed")
            job.emit(APIError(500, "The model failed while generating.", type="server_error"))
        finally:
            gen.close()  # stops the generator at once; Inference then forgets the half-written cache
