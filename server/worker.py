"""The model thread: one thread owns the engine and runs every admitted request together (continuous
batching, one KV-cache slot per generation: engine/scheduler.py). Results travel back to the event loop
through an asyncio.Queue fed with call_soon_threadsafe, so the loop never blocks on the model, and a cancel
flag set by the loop takes a request out between steps.

A job arrives tokenized (the doors render and tokenize off this thread): one or more prompts with n choices
each; its events are (choice index, Delta) pairs, choice p * n + i being choice i of prompt p, then DONE.

Fairness and bounded work: a job's generations go to the engine in units (one prompt's choices, at most a
slot's worth at a time) only while a slot is free. A job waiting in the queue gets the next free slot;
otherwise the running jobs take turns, so a request with many prompts or choices shares the slots with
everyone else's. Each step's bookkeeping walks only the generations in the engine, never what waits.

Supervision: an exception while serving one request fails that request alone (engine/scheduler.py keeps
those inside the request); an exception outside any request is logged with its traceback, fails what was
running, resets the engine and the loop goes on. After MAX_RESTARTS such failures within RESTART_WINDOW_S the
engine is declared dead: /health answers 503 and new requests get 503. /health also reports an engine
whose step has not returned for --watchdog_s as stalled."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request

from engine.constraint import ConstraintError
from inference import Generation, GenerationStats, Inference, PromptTooLongError, SamplingParams
from server.errors import APIError

log = logging.getLogger("api")
DONE = object()  # the last event of every job
_NONE_WAITING = object()  # the queue was empty
DISCONNECT_POLL_S = 0.5
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


class Observer(Protocol):
    """Told what the worker does, for metrics (server/metrics.py)."""

    def finished(self, stats: GenerationStats, first_of_prompt: bool) -> None: ...


@dataclass(eq=False)  # each job is its own key in the worker's tables
class Job:
    prompts: list[list[int]]  # the token ids of each prompt
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    n: int = 1  # choices per prompt
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    checked_at: float = field(default_factory=time.monotonic)  # last look for a client disconnect

    def emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:
            self.cancel.set()  # the loop is gone (shutdown): nobody is listening any more

    def fail(self, error: APIError) -> None:
        self.emit(error)
        self.emit(DONE)


async def next_event(job: Job, request: Request | None = None) -> Any:
    """The worker's next event. With `request`, every DISCONNECT_POLL_S (also while tokens keep coming) we
    look whether the client hung up, and if so cancel its job: nothing else tells a non-streaming handler."""
    if request is None:
        return await job.events.get()
    while True:
        now = time.monotonic()
        if now - job.checked_at >= DISCONNECT_POLL_S:
            job.checked_at = now
            if await request.is_disconnected():
                job.cancel.set()
                raise APIError(499, "client disconnected", code="client_disconnected")
        try:
            return await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            continue


class _Run:
    """A job taken from the queue: the units it has not yet given the engine, and its generations there."""

    def __init__(self, job: Job, unit: int) -> None:
        self.job = job
        self.units: deque[tuple[int, int, int]] = deque(  # (prompt, first choice, choices)
            (p, first, min(unit, job.n - first)) for p in range(len(job.prompts)) for first in range(0, job.n, unit))
        self.live: dict[Generation, int] = {}  # generation -> its choice index
        self.error: APIError | None = None

    @property
    def done(self) -> bool:
        return not self.units and not self.live


def _client_error(error: BaseException) -> APIError:
    """What a failed generation tells its client: a constraint that cannot go on is the request's own
    problem (400); anything else is ours (500)."""
    if isinstance(error, ConstraintError):
        return APIError(400, f"The output constraint failed while generating: {error}", param="response_format",
                        code="invalid_schema")
    return APIError(500, "The model failed while generating.", type="server_error")


class Worker:
    def __init__(self, inference: Inference, max_queue: int, watchdog_s: float = 60.0,
                 observer: Observer | None = None) -> None:
        self.inference = inference
        self.observer = observer
        self.slots = inference.slots
        self.watchdog_s = watchdog_s
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._supervise, name="model-worker", daemon=True)
        self._runs: deque[_Run] = deque()  # jobs taken from the queue, in turn order
        self._stopping = threading.Event()
        self.step_started: float | None = None  # set while the engine runs a step
        self.dead: str | None = None  # why the engine stopped for good
        self.restarts: list[float] = []
        self.served = 0
        self.cancelled = 0
        self.failed = 0
        self.peak_busy = 0  # the most generations that ran at once

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()  # the model thread cancels what runs
        self._drain(APIError(503, "The server is shutting down.", code="shutting_down"))
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _drain(self, error: APIError) -> None:
        """Fail every job still in the queue (so that a sentinel fits in a full one)."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.fail(error)

    def submit(self, job: Job) -> None:
        problem = self.problem()
        if problem is not None:
            raise APIError(503, f"The model is not serving: {problem}.", code="engine_unavailable",
                           type="server_error")
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise APIError(429, f"The server is busy: {self._jobs.maxsize} requests are already waiting. "
                                "Retry shortly.", code="rate_limit_exceeded") from None

    # ---- health ----------------------------------------------------------------------------------
    def problem(self) -> str | None:
        """Why the engine cannot serve now, or None when it can."""
        if self.dead is not None:
            return self.dead
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stopping.is_set():
            return "the model thread has stopped"
        started = self.step_started
        if started is not None and time.monotonic() - started > self.watchdog_s:
            return f"one engine step has run for over {self.watchdog_s:g} s (--watchdog_s)"
        return None

    def busy_slots(self) -> int:
        return self.inference.busy_slots()

    def queued(self) -> int:
        return self._jobs.qsize()

    def status(self) -> dict:
        busy = self.busy_slots()
        problem = self.problem()
        return {"status": "ok" if problem is None else "unavailable", **({"problem": problem} if problem else {}),
                "queued": self._jobs.qsize(), "busy": busy > 0 or bool(self._runs), "slots": self.slots,
                "busy_slots": busy, "free_slots": self.slots - busy, "peak_busy_slots": self.peak_busy,
                "running_requests": len(self._runs), "served": self.served, "cancelled": self.cancelled,
                "failed": self.failed, "engine_restarts": len(self.restarts)}

    # ---- the model thread ------------------------------------------------------------------------
    def _supervise(self) -> None:
        while True:
            try:
                self._loop()
                return
            except Exception as e:
                if not self._restart(e):
                    return

    def _restart(self, error: Exception) -> bool:
        """After a failure outside any request: fail what runs, reset the engine; False once it is dead."""
        log.exception("the engine failed outside any request; failing what it ran and restarting it")
        self.step_started = None
        for run in list(self._runs):
            self._finish(run, APIError(500, "The model failed while generating.", type="server_error"))
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
        try:
            self.inference.recover(error)
        except Exception:
            log.exception("the engine could not be reset")
            self.restarts += [now] * MAX_RESTARTS
        if len(self.restarts) >= MAX_RESTARTS:
            self.dead = f"the engine failed {len(self.restarts)} times within {RESTART_WINDOW_S:g} s (see the log)"
            log.error("%s; the server will answer 503 until it is restarted", self.dead)
            self._drain(APIError(503, f"The model is not serving: {self.dead}.", code="engine_unavailable",
                                 type="server_error"))
            return False
        return True

    def _loop(self) -> None:
        while True:
            if self._stopping.is_set():
                for run in list(self._runs):
                    self._cancel(run)
            if not self._admit():
                return
            for run in [r for r in self._runs if r.job.cancel.is_set()]:
                self._cancel(run)  # the client left
            if any(run.live for run in self._runs):
                self._step()
            self._collect()

    def _admit(self) -> bool:
        """Give the engine units while a slot is free: a queued job first, else the running jobs in turn.
        With nothing running, wait for a job. False when told to stop."""
        while self.inference.free_slots() > 0:
            try:
                job = self._jobs.get(block=not self._runs)
            except queue.Empty:
                job = _NONE_WAITING
            if job is None:  # stop()'s sentinel
                return False
            if job is not _NONE_WAITING:
                if job.cancel.is_set():
                    self.cancelled += 1  # the client left while waiting
                    job.emit(DONE)
                    continue
                self._runs.appendleft(_Run(job, self.slots))  # its first unit goes now
            if not self._give_unit():
                break
        self.peak_busy = max(self.peak_busy, self.inference.busy_slots())
        return True

    def _give_unit(self) -> bool:
        """The next unit of the first run that has one, which then goes to the back; False when none has."""
        for _ in range(len(self._runs)):
            run = self._runs[0]
            self._runs.rotate(-1)
            if run.units and run.error is None:
                p, first, count = run.units.popleft()
                try:
                    generations = self.inference.start_choices(run.job.prompts[p], run.job.params, count, first)
                except PromptTooLongError as e:  # the doors check lengths first; this is the engine's word
                    run.error = APIError(400, str(e), code="context_length_exceeded")
                    return True
                run.live.update((g, p * run.job.n + first + i) for i, g in enumerate(generations))
                return True
        return False

    def _step(self) -> None:
        self.step_started = time.monotonic()
        try:
            # A first token goes out as soon as its prompt is read, not after the step's other prompts.
            self.inference.step(first_tokens=self._send)
        finally:
            self.step_started = None

    def _send(self) -> None:
        """Every live generation's new Deltas, to its job's event queue."""
        for run in self._runs:
            for generation, i in run.live.items():
                for delta in generation.take():
                    run.job.emit((i, delta))
                    if delta.stats is not None and self.observer is not None:
                        self.observer.finished(delta.stats, i % run.job.n == 0)

    def _collect(self) -> None:
        """Send what the step produced; drop finished generations; end jobs that are done or failed."""
        self._send()
        for run in list(self._runs):
            for generation in [g for g in run.live if g.finished]:
                del run.live[generation]
                if generation.error is not None and run.error is None:
                    log.error("a generation failed", exc_info=generation.error)
                    run.error = _client_error(generation.error)
            if run.error is not None:
                self.failed += 1
                self._finish(run, run.error)
            elif run.done:
                self.served += 1
                self._finish(run)

    def _finish(self, run: _Run, error: APIError | None = None) -> None:
        """Take the run out: what it still has in the engine is cancelled; its client gets the error, if
        any, then DONE."""
        for generation in run.live:
            try:
                self.inference.cancel(generation)
            except Exception as e:  # its slot must come back all the same
                log.exception("cancelling a generation failed; taking it out by force")
                self.inference.abandon(generation, e)
        run.live.clear()
        run.units.clear()
        if run in self._runs:
            self._runs.remove(run)
        if error is not None:
            run.job.emit(error)
        run.job.emit(DONE)

    def _cancel(self, run: _Run) -> None:
        self.cancelled += 1
        self._finish(run)
