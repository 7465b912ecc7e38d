"""Continuous batching: up to --max_batch requests share one session, each in its own row of the KV cache
(a slot), and each decode step runs all of them in one graph call.

- Admission: a request takes the free slot whose cached tokens share the longest prefix with its prompt
  (so a user's next turn finds their own cache), else the least recently used free slot; it prefills
  only the tokens past that prefix. Without a free slot it waits.
- Prefill: the prompt runs in chunks on its row alone (power-of-two lengths, or as few calls as
  --max_prefill_length allows on a graph that takes any length), between decode steps. A step starts
  whole chunks while fewer than --max_prefill_length prompt tokens have run in it, oldest prompt first,
  and the prompt the budget ran out on goes behind the others: a short prompt that arrives during a long
  one's prefill waits for one step's chunks of it, not for all of it. A long prompt
  delays decoding by under two chunks at a time, and short prompts that arrive together are read in
  the same step.
- Decode: every step feeds each generating request its last token, all rows in one call, and samples
  each row's next token with the request's own sampling settings and random generator, so a request's
  tokens do not depend on what else runs. A request joins after its last prefill chunk and leaves the
  moment it ends (end token, stop string, length, cancel): its slot is free at once, its cache kept.
- Borrowing: when another slot, busy or free, holds a longer prefix of the prompt than the chosen slot
  (the same system prompt, say), its cache entries of that prefix are copied into the chosen slot's row
  (`copy_row`), and only the rest is prefilled.
- n choices for one prompt (`submit_group`): the first prefills it; the others then wait at the head of
  the queue and, each in a free slot, copy the first one's cache of the prompt (`copy_row`) and sample
  their first token from the same logits, so the prompt is computed once. A backend that cannot copy a
  row, or a first choice that left before its prefill ended, makes them prefill as any request does.
- Speculative decoding (a draft model) runs while exactly one request is generating; when a second
  one joins, the first goes on with plain batched decoding from the token it is at.

Failures stay with the request they belong to: an exception while choosing, processing or accepting a
request's token (a grammar's matcher, the detokenizer) fails that request alone; a graph call that fails
for one row fails that row's request, and a batched decode call that fails is retried row by row, so only
the rows that fail alone are failed. A failed request leaves at once, its slot free and its row forgotten.

The scheduler knows tokens only: a Request subclass turns them into text and decides when to stop.
Everything runs on the caller's thread; nothing here is thread-safe.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterator, Sequence

import numpy as np

from backends.base import Session
from engine.penalties import MinTokens, RepetitionPenalty
from engine.sampling import LogitsProcessor, SamplingParams, TokenLogprob, sample, speculative_ok, token_logprob
from engine.speculative import Drafter, speculative_after
from kvcache import common_prefix


class Request:
    """One generation, as the scheduler sees it. `accept` gets each new token; `end` is called once when it
    finishes normally (not when cancelled or failed). After it leaves, `finished` is set and `error` holds
    what failed it, if anything."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, end_ids: Sequence[int] = ()):
        """end_ids: the tokens that end the answer, held back while params.min_tokens asks for more."""
        self.prompt_ids = list(prompt_ids)
        self.params = params
        # The request's own processors (after the ones it was given): they need its prompt and end tokens.
        self.own: list[LogitsProcessor] = []
        if params.repetition_penalty != 1.0:
            self.own.append(RepetitionPenalty(params.repetition_penalty, prompt_ids))
        if params.min_tokens > 0:
            self.own.append(MinTokens(params.min_tokens, end_ids))
        self.rng = np.random.default_rng(params.seed)
        self.slot: Slot | None = None
        self.reused = 0  # prompt tokens found in the slot's cache
        self.judged = self.accepted = 0  # draft guesses judged and kept for this request
        self.generated: list[int] = []  # tokens chosen so far, as the logits processors see them
        self.finished = False
        self.error: BaseException | None = None
        self.todo: list[int] = []  # prompt tokens still to prefill
        self.pending: int | None = None  # accepted, not yet fed to the model
        self.spec: Iterator[int] | None = None  # its speculative decoding, while it runs
        self.logprob: TokenLogprob | None = None  # of the last chosen token, when the params ask for them
        self.followers: list[Request] = []  # the other choices of its prompt, until its prefill ends
        self.shared: tuple[Request, np.ndarray] | None = None  # the choice whose cache and logits it takes

    def accept(self, token: int, cache_full: bool) -> bool:
        """The next generated token; return False to end here (the token is then not fed to the model).
        cache_full: no slot is left to feed it."""
        raise NotImplementedError

    def end(self) -> None:
        """The request finished normally."""

    def process(self, logits: np.ndarray) -> np.ndarray:
        """The model's logits [vocab] changed by the request's processors."""
        for processor in self.params.processors + self.own:
            logits = processor.process(logits, self.generated)
        return logits

    def chosen(self, token: int) -> None:
        """Tell the processors the token chosen after the last `process`."""
        for processor in self.params.processors + self.own:
            processor.accept(token)
        self.generated.append(token)

    def choose(self, logits: np.ndarray) -> int:
        """The next token from the model's logits [vocab]: the request's processors, then its sampling."""
        logits = self.process(logits)
        token = sample(logits, self.params, self.rng)
        if self.params.logprobs is not None:
            self.logprob = token_logprob(logits, token, self.params.logprobs)
        self.chosen(token)
        return token


class Slot:
    """A row of the cache and the tokens it holds (for prefix reuse), or is given to a request."""

    def __init__(self, index: int, row: Session):
        self.index, self.row = index, row
        self.ids: list[int] = []
        self.request: Request | None = None
        self.used_at = 0

    def held(self) -> list[int]:
        """The tokens the row really holds: a row can give up its last slot while idle (backends/base.py)."""
        return self.ids[:self.row.length]


class Scheduler:
    def __init__(self, session: Session, drafter: Drafter | None = None):
        self.session, self.drafter = session, drafter
        self.max_prefill_length = session.config.session.max_prefill_length
        self.slots = [Slot(i, session.row_session(i)) for i in range(session.rows)]
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []  # oldest first: its chunks run first
        self.decoding: list[Request] = []
        self._clock = 0

    @property
    def active(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    def free_slots(self) -> int:
        """Slots a new request would get now."""
        return sum(s.request is None for s in self.slots) - len(self.waiting)

    def busy_slots(self) -> int:
        return sum(s.request is not None for s in self.slots)

    def submit(self, request: Request) -> None:
        self.waiting.append(request)
        self._admit()

    def submit_group(self, requests: list[Request]) -> None:
        """Choices of one prompt: the first is queued now, the others when its prefill is done."""
        requests[0].followers = list(requests[1:])
        self.submit(requests[0])

    def cancel(self, request: Request) -> None:
        """Take the request out at once; its slot keeps the tokens it holds, for reuse."""
        if request.finished:
            return
        if request in self.waiting or request.slot is None:  # queued, or a choice not yet queued
            if request in self.waiting:
                self.waiting.remove(request)
            request.finished = True
            return
        self._leave(request)

    def reset(self) -> None:
        """Forget every slot's cache (and the draft model's); only while nothing runs."""
        if self.active or self.waiting:
            raise RuntimeError("reset while requests run")
        self.session.reset()
        for s in self.slots:
            s.ids = []
        if self.drafter:
            self.drafter.reset()

    def step(self, first_tokens: Callable[[], None] | None = None) -> None:
        """Admit what fits, run prefill chunks (until --max_prefill_length tokens have run), then one decode
        step for every generating request.
        first_tokens: called each time a prompt's last chunk has given its request a first token, so that a
        server can send it at once rather than after the step's other chunks and its decode step.
        A failure that belongs to one request fails it alone (see the module's docstring); anything else
        fails every request that holds a slot. Errors are stored on the requests; only interrupts propagate."""
        try:
            self._admit()
            self._prefill(first_tokens)
            if self.decoding:
                self._decode()
        except BaseException as e:
            self.fail_all(e)
            if not isinstance(e, Exception):
                raise

    def fail_all(self, error: BaseException) -> None:
        """Fail every request that holds a slot or waits for one, and forget every row: the state to restart
        from after a failure that belongs to no request."""
        while victims := [s.request for s in self.slots if s.request is not None] + list(self.waiting):
            for request in victims:  # a failed first choice sends its followers to the queue: failed next
                self.fail(request, error)

    # ---- admission and prefill ---------------------------------------------------------------------
    def _admit(self) -> None:
        while self.waiting:
            free = [s for s in self.slots if s.request is None]
            if not free:
                return
            request = self.waiting.popleft()
            if request.shared is not None and self._admit_shared(request, free):
                continue
            slot = self._choose(free, request.prompt_ids)
            prompt = request.prompt_ids
            reuse = self._borrow(slot, prompt, min(common_prefix(slot.held(), prompt), len(prompt) - 1))
            slot.row.truncate(reuse)
            slot.ids = prompt[:reuse]
            slot.request, request.slot = request, slot
            request.reused, request.todo = reuse, prompt[reuse:]
            self._clock += 1
            slot.used_at = self._clock
            self.prefilling.append(request)

    def _borrow(self, slot: Slot, prompt: list[int], reuse: int) -> int:
        """The prompt tokens the slot holds once another slot (busy or free) with a longer prefix of the
        prompt, such as the same system prompt or document, has lent it: that row's cache entries are
        copied into this slot's row (a host copy, or one device memcpy), so only the rest is prefilled.
        A row never rewrites the entries of the tokens it holds, so a busy row can lend them."""
        lengths = {other: min(common_prefix(other.held(), prompt), len(prompt) - 1)
                   for other in self.slots if other is not slot}
        donor = max(lengths, key=lengths.get, default=None)
        if donor is None or lengths[donor] <= reuse or not self.session.copy_row(donor.index, slot.index,
                                                                                  lengths[donor]):
            return reuse
        return lengths[donor]

    def _admit_shared(self, request: Request, free: list[Slot]) -> bool:
        """Give a choice a copy of its first choice's cache of the prompt, and its first token from the
        same logits; False when the copy cannot be made (then it prefills as usual)."""
        first, logits = request.shared
        request.shared = None
        prompt, source = request.prompt_ids, first.slot
        others = [s for s in free if s is not source]
        if source is None or not others or source.held()[:len(prompt)] != prompt:
            return False
        slot = min(others, key=lambda s: s.used_at)
        if not self.session.copy_row(source.index, slot.index, len(prompt)):
            return False
        slot.ids = list(prompt)
        slot.request, request.slot = request, slot
        request.reused, request.todo = len(prompt), []
        self._clock += 1
        slot.used_at = self._clock
        self._choose_and_deliver(request, logits.copy())
        return True

    def _release_followers(self, request: Request, logits: np.ndarray | None) -> None:
        """The other choices of the request's prompt go to the head of the queue, to share its prefill
        when its logits are given."""
        followers = [f for f in request.followers if not f.finished]
        request.followers = []
        for f in followers:
            f.shared = (request, logits) if logits is not None else None
        self.waiting.extendleft(reversed(followers))

    @staticmethod
    def _choose(free: list[Slot], prompt: list[int]) -> Slot:
        """The longest shared prefix; among equals (none shared, say), the least recently used."""
        return max(free, key=lambda s: (common_prefix(s.held(), prompt), -s.used_at))

    def _prefill(self, first_tokens: Callable[[], None] | None) -> None:
        """Whole chunks, started while fewer than --max_prefill_length prompt tokens have run in this step:
        under two chunks' worth between two decode steps. Prompts take turns: the one the step's budget
        ran out on goes behind the others. A request's split depends on its own prompt only, never on what
        else waits, so its logits do too."""
        budget = self.max_prefill_length
        request = None
        while self.prefilling and budget > 0:
            request = self.prefilling[0]
            size = request.slot.row.chunks(len(request.todo))[0]
            if self._prefill_chunk(request, size) and first_tokens:
                first_tokens()
            budget -= size
        if len(self.prefilling) > 1 and self.prefilling[0] is request:  # chunks left: the others go first
            self.prefilling.append(self.prefilling.pop(0))

    def _prefill_chunk(self, request: Request, size: int) -> bool:
        """One chunk of the request's prompt; True when it was the last and the request has its first token."""
        chunk, last = request.todo[:size], size == len(request.todo)
        try:
            logits = request.slot.row.feed(np.array([chunk], np.int64), want_logits=last)
        except Exception as e:
            self.fail(request, e)
            return False
        request.slot.ids += chunk
        request.todo = request.todo[size:]
        if last:
            self.prefilling.remove(request)
            if request.followers:
                self._release_followers(request, logits.copy())
            self._choose_and_deliver(request, logits)
            self._admit()
        return last

    # ---- decoding ---------------------------------------------------------------------------------
    def _choose_and_deliver(self, request: Request, logits: np.ndarray) -> None:
        """The request's next token from its logits, handed to it; a failure there is the request's own."""
        try:
            token = request.choose(logits)
        except Exception as e:
            self.fail(request, e)
            return
        self._deliver(request, token)

    def _deliver(self, request: Request, token: int) -> None:
        """Hand the request its next token; it is fed at the next decode step unless the request ends.
        A failure in the request's own handling of the token (its text layer) fails it alone."""
        try:
            more = request.accept(token, len(request.slot.ids) >= request.slot.row.kv_len)
        except Exception as e:
            self.fail(request, e)
            return
        if more:
            request.pending = token
            if request not in self.decoding:
                self.decoding.append(request)
        else:
            self._leave(request, finished=True)

    def _decode(self) -> None:
        if self.drafter and len(self.decoding) == 1 and speculative_ok(self.decoding[0].params):
            self._speculate(self.decoding[0])
            return
        running = list(self.decoding)
        for request in running:
            self._stop_speculating(request)
        try:
            logits = list(self.session.decode([r.slot.index for r in running], [r.pending for r in running]))
        except Exception as e:
            if len(running) == 1:
                self.fail(running[0], e)
                return
            running, logits = self._decode_alone(running)
        for request, row_logits in zip(running, logits):
            request.slot.ids.append(request.pending)
            request.pending = None
            self._choose_and_deliver(request, row_logits)

    def _decode_alone(self, running: list[Request]) -> tuple[list[Request], list[np.ndarray]]:
        """After a batched decode call failed: each row on its own (a row's step writes only its own cache
        entries, at the same positions, so running it again is safe). Rows that fail alone are failed."""
        kept, logits = [], []
        for request in running:
            try:
                logits.append(self.session.decode([request.slot.index], [request.pending])[0])
            except Exception as e:
                self.fail(request, e)
                continue
            kept.append(request)
        return kept, logits

    def _speculate(self, request: Request) -> None:
        """The next token of the only generating request, by speculative decoding: one draft-and-check
        round yields several tokens, handed out one per step so that a joining request waits for none."""
        if request.spec is None:
            request.spec = speculative_after(request.slot.row, self.drafter, request.slot.ids, request.pending,
                                             request.params, request.rng, request.process)
        judged, accepted = self.drafter.judged, self.drafter.accepted
        try:
            token = next(request.spec)
            request.chosen(token)  # before the generator judges the next guess, which depends on it
        except Exception as e:
            self.fail(request, e)
            return
        request.judged += self.drafter.judged - judged
        request.accepted += self.drafter.accepted - accepted
        request.pending = None
        self._deliver(request, token)

    def _stop_speculating(self, request: Request) -> None:
        """From here on plain decoding: the target may hold guesses past the tokens that count."""
        if request.spec is not None:
            request.spec.close()
            request.spec = None
            request.slot.row.truncate(len(request.slot.ids))

    # ---- leaving ----------------------------------------------------------------------------------
    def _leave(self, request: Request, finished: bool = False) -> None:
        self._release_followers(request, None)  # it left before its prefill ended: they prefill themselves
        self._stop_speculating(request)
        for queue in (self.prefilling, self.decoding):
            if request in queue:
                queue.remove(request)
        slot = request.slot
        slot.request = None
        self._clock += 1
        slot.used_at = self._clock
        request.finished = True
        if finished:
            request.end()

    def fail(self, request: Request, error: BaseException) -> None:
        """Something failed for the request: it leaves with the error, whatever state it was in, and its
        row, which may be half-written, is forgotten. Nothing before the row's reset may raise: a failed
        request must never keep its slot."""
        if request.finished:
            return
        request.error = error
        request.finished = True
        if request in self.waiting:
            self.waiting.remove(request)
        for queue in (self.prefilling, self.decoding):
            if request in queue:
                queue.remove(request)
        self._release_followers(request, None)
        spec, request.spec = request.spec, None
        slot = request.slot
        try:
            if spec is not None:
                spec.close()
                if self.drafter:
                    self.drafter.reset()
        finally:
            if slot is not None and slot.request is request:
                slot.request, slot.ids = None, []
                self._clock += 1
                slot.used_at = self._clock
                slot.row.reset()
