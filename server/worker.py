"""One thread owns the model and runs every admitted request together (continuous batching, one slot of
the KV cache each: engine/scheduler.py); requests beyond the slots wait in a bounded queue, and beyond that
get 429. Results travel back to the event loop through an asyncio.Queue fed with call_soon_threadsafe, so
the loop never blocks on the model, and a cancel flag set by the loop takes a request out between steps."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from inference import Generation, Inference, PromptTooLongError, SamplingParams
from server.errors import APIError

log = logging.getLogger("api")
DONE = object()  # the last event of every job


@dataclass(eq=False)  # each job is its own key in the worker's table of running jobs
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
        self.slots = len(inference.scheduler.slots)
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
        self._running: dict[Job, Generation] = {}
        self._stopping = threading.Event()
        self.served = 0
        self.cancelled = 0
        self.peak_busy = 0  # the most requests that ran at once

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()  # the model thread cancels what runs
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
        busy = len(self._running)
        return {"queued": self._jobs.qsize(), "busy": busy > 0, "slots": self.slots, "busy_slots": busy,
                "free_slots": self.slots - busy, "peak_busy_slots": self.peak_busy, "served": self.served,
                "cancelled": self.cancelled}

    def _run(self) -> None:
        while True:
            if self._stopping.is_set():
                for job in list(self._running):
                    self._cancel(job)
            # Take waiting jobs while a slot is free; with nothing running, wait for one.
            while len(self._running) < self.slots:
                try:
                    job = self._jobs.get(block=not self._running)
                except queue.Empty:
                    break
                if job is None:
                    for running in list(self._running):
                        self._cancel(running)
                    return
                self._admit(job)
            for job in [j for j in self._running if j.cancel.is_set()]:
                self._cancel(job)  # the client left
            if self._running:
                self._step()

    def _admit(self, job: Job) -> None:
        if job.cancel.is_set():
            self.cancelled += 1  # the client left while waiting
            job.emit(DONE)
            return
        ids = self._prompt(job)
        if ids is None:
            job.emit(DONE)
            return
        try:
            self._running[job] = self.inference.start(ids, job.params)
            self.peak_busy = max(self.peak_busy, len(self._running))
        except PromptTooLongError as e:
            job.emit(APIError(400, str(e), code="context_length_exceeded", param="messages"))
            job.emit(DONE)

    def _step(self) -> None:
        try:
            self.inference.step()
        except BaseException:
            log.exception("the engine failed")  # requests it ran for carry the error; reported below
        for job, generation in list(self._running.items()):
            for delta in generation.take():
                job.emit(delta)
            if generation.finished:
                del self._running[job]
                if generation.error is not None:
                    log.error("generation failed", exc_info=generation.error)
                    job.emit(APIError(500, "The model failed while generating.", type="server_error"))
                else:
                    self.served += 1
                job.emit(DONE)

    def _cancel(self, job: Job) -> None:
        self.inference.cancel(self._running.pop(job))
        self.cancelled += 1
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
