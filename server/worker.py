"""One thread owns the model and runs every admitted request together (continuous batching, one slot of
the KV cache each: engine/scheduler.py); requests beyond the slots wait in a bounded queue, and beyond that
get 429. Results travel back to the event loop through an asyncio.Queue fed with call_soon_threadsafe, so
the loop never blocks on the model, and a cancel flag set by the loop takes a request out between steps.

A job is one or more prompts (the legacy endpoint takes a list) with n choices each; its events are
(choice index, Delta) pairs, choice p * n + i being choice i of prompt p, then DONE."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request

from inference import Generation, GenerationStats, Inference, PromptTooLongError, SamplingParams
from server.errors import APIError

log = logging.getLogger("api")
DONE = object()  # the last event of every job
DISCONNECT_POLL_S = 0.5


class Observer(Protocol):
    """Told what the worker does, for metrics (server/metrics.py)."""

    def finished(self, stats: GenerationStats, first_of_prompt: bool) -> None: ...


@dataclass(eq=False)  # each job is its own key in the worker's table of running jobs
class Job:
    messages: list[dict]
    tools: list[dict] | None
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    n: int = 1  # choices per prompt
    texts: list[str] | None = None  # raw prompts (no chat template) instead of the messages
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    checked_at: float = field(default_factory=time.monotonic)  # last look for a client disconnect

    def emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:
            self.cancel.set()  # the loop is gone (shutdown): nobody is listening any more


async def next_event(job: Job, request: Request) -> Any:
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


class Worker:
    def __init__(self, inference: Inference, max_queue: int, max_input_length: int,
                 observer: Observer | None = None) -> None:
        self.inference = inference
        self.observer = observer
        self.max_input_length = max_input_length
        self.slots = len(inference.scheduler.slots)
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
        self._running: dict[Job, list[Generation]] = {}
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

    def busy_slots(self) -> int:
        """Generations admitted and not finished (choices beyond the free slots wait in the scheduler)."""
        return sum(not g.finished for gens in list(self._running.values()) for g in gens)

    def queued(self) -> int:
        return self._jobs.qsize()

    def status(self) -> dict:
        busy = min(self.busy_slots(), self.slots)
        return {"queued": self._jobs.qsize(), "busy": busy > 0, "slots": self.slots, "busy_slots": busy,
                "free_slots": self.slots - busy, "peak_busy_slots": self.peak_busy, "served": self.served,
                "cancelled": self.cancelled}

    def _run(self) -> None:
        while True:
            if self._stopping.is_set():
                for job in list(self._running):
                    self._cancel(job)
            # Take waiting jobs while a slot is free; with nothing running, wait for one.
            while self.busy_slots() < self.slots:
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
        prompts = self._prompts(job)
        if prompts is None:
            job.emit(DONE)
            return
        generations: list[Generation] = []
        try:
            for ids in prompts:
                generations += self.inference.start_choices(ids, job.params, job.n)
        except PromptTooLongError as e:
            for g in generations:
                self.inference.cancel(g)
            job.emit(APIError(400, str(e), code="context_length_exceeded",
                              param="prompt" if job.texts is not None else "messages"))
            job.emit(DONE)
            return
        self._running[job] = generations
        self.peak_busy = max(self.peak_busy, min(self.busy_slots(), self.slots))

    def _step(self) -> None:
        try:
            # A first token goes out as soon as its prompt is read, not after the step's other prompts.
            self.inference.step(first_tokens=self._send)
        except BaseException:
            log.exception("the engine failed")  # requests it ran for carry the error; reported below
        self._send()
        for job, generations in list(self._running.items()):
            failed = next((g.error for g in generations if g.error is not None), None)
            if failed is not None:
                log.error("generation failed", exc_info=failed)
                self._stop(job)
                job.emit(APIError(500, "The model failed while generating.", type="server_error"))
                job.emit(DONE)
            elif all(g.finished for g in generations):
                del self._running[job]
                self.served += 1
                job.emit(DONE)

    def _send(self) -> None:
        """Every running job's new Deltas, to its event queue."""
        for job, generations in self._running.items():
            for i, generation in enumerate(generations):
                for delta in generation.take():
                    job.emit((i, delta))
                    if delta.stats is not None and self.observer is not None:
                        self.observer.finished(delta.stats, i % job.n == 0)

    def _stop(self, job: Job) -> None:
        for generation in self._running.pop(job):
            self.inference.cancel(generation)

    def _cancel(self, job: Job) -> None:
        self._stop(job)
        self.cancelled += 1
        job.emit(DONE)

    def _prompts(self, job: Job) -> list[list[int]] | None:
        """The token ids of each of the job's prompts; None after emitting the error that refuses them."""
        if job.texts is None:
            ids = self._prompt(job)
            return None if ids is None else [ids]
        out = []
        for i, text in enumerate(job.texts):
            ids = self.inference.tokenizer.encode(text, add_special_tokens=False)
            where = f"prompt[{i}]" if len(job.texts) > 1 else "prompt"
            if not ids:
                job.emit(APIError(400, f"{where} is empty: there is nothing to complete", param="prompt"))
                return None
            if self._too_long(job, len(ids), f"{where} is", "prompt"):
                return None
            out.append(ids)
        return out

    def _prompt(self, job: Job) -> list[int] | None:
        try:
            ids = self.inference.apply_chat_template(job.messages, job.tools)
        except Exception as e:  # the template rejects what the messages ask for: the client's problem
            job.emit(APIError(400, f"The messages cannot be rendered with this model's chat template: {e}",
                              param="messages"))
            return None
        if self._too_long(job, len(ids), "your messages are", "messages"):
            return None
        return ids

    def _too_long(self, job: Job, tokens: int, what: str, param: str) -> bool:
        """Refuse a prompt over --max_input_length (a 400 on the job); True when refused."""
        if tokens <= self.max_input_length:
            return False
        job.emit(APIError(400, f"This model's maximum prompt length is {self.max_input_length} tokens "
                               f"(--max_input_length); {what} {tokens} tokens.",
                          code="context_length_exceeded", param=param))
        return True
