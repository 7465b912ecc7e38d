"""One request failing at any stage must fail that request alone. Four requests run together on a real server
(uvicorn in this process, so that a fault can be injected into its code); one of them, the poisoned one, meets
an exception at one stage: tokenizing, templating, grammar compile, a grammar mask, a prefill chunk, a decode
step, detokenizing, streaming, or cancelling it. The three others must get the answers they get alone, every
slot must come back, /health must say the engine is well, and the next requests must be answered as before.
Runs on every CPU backend and on the emulated NPU."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from api_helpers import running
from backends.base import Row
from config import InferenceConfig
from emulator import harness
from engine.constraint import GrammarConstraint, Grammars
from engine.text import Detokenizer
from inference import Generation, Inference
from server.chat import ChatAnswer

KV_LEN = 256
POISON = "poison"  # the poisoned request's message
NORMAL = [f"hello number {i}" for i in range(3)]
STAGES = ["tokenizing", "templating", "grammar compile", "mask", "prefill", "decode", "detokenizing", "streaming",
          "cancel"]


class Fault(RuntimeError):
    """The injected failure."""


def poisoned(generation: Generation) -> bool:
    # Poisoned requests ask for 7 or 207 tokens; the others for 12.
    return generation.params.max_new_tokens % 100 == 7


@pytest.fixture(scope="module")
def graphs(tiny_model_dir, tiny_onnx_of, cpu_onnx_of) -> dict:
    return {"cpu graph": cpu_onnx_of(tiny_model_dir, KV_LEN), "npu graph": tiny_onnx_of(tiny_model_dir, KV_LEN)}


@pytest.fixture(scope="module")
def acl_om(tiny_model_dir, tiny_onnx_of, tmp_path_factory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        harness.activate(mp)
        yield harness.compile_om(tiny_onnx_of(tiny_model_dir, KV_LEN), tmp_path_factory.mktemp("om") / "tiny", 8,
                                 "--max_batch", "4")


def engine_for(kind: str, model_dir: Path, graphs: dict, request) -> Inference:
    base = dict(kv_cache_length=KV_LEN, max_input_length=200, max_prefill_length=8, max_batch=4)
    if kind == "acl":
        harness.activate(request.getfixturevalue("monkeypatch"))
        om = request.getfixturevalue("acl_om")
        return Inference(InferenceConfig.create(model_dir, session_type="acl", om_model_path=str(om), **base))
    if kind == "pytorch":
        return Inference(InferenceConfig.create(model_dir, session_type="pytorch", cpu_thread=1, **base))
    return Inference(InferenceConfig.create(model_dir, session_type="onnx", onnx_model_path=str(graphs[kind]),
                                            cpu_thread=1, **base))


def chat(url: str, text: str, max_tokens: int = 12, **extra) -> tuple[int, str]:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0, **extra}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    return r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text


def poisoned_stream(url: str, leave_after: int | None, **extra) -> str:
    """The poisoned request, streamed; leave_after: close the connection after that many events."""
    body = {"messages": [{"role": "user", "content": POISON}], "temperature": 0, "stream": True,
            "max_tokens": 207 if leave_after else 7, **extra}
    events = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        try:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(line)
                    if leave_after and len(events) >= leave_after:
                        break
        except httpx.HTTPError as e:  # the server may cut a stream it cannot go on with
            events.append(f"cut: {type(e).__name__}")
    return "\n".join(events)


def idle_health(url: str, timeout_s: float = 30) -> httpx.Response:
    """/health once nothing runs (a left client's job ends at the worker's next step), or after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = httpx.get(url + "/health", timeout=10)
        if not health.json()["busy"] or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def inject(stage: str, engine: Inference, monkeypatch, armed: threading.Event) -> None:
    """Make `stage` raise Fault for the poisoned request while `armed` is set."""
    def hit(condition: bool) -> None:
        if armed.is_set() and condition:
            raise Fault(f"injected at {stage}")

    # Slower decode steps while armed: the tiny model would otherwise finish an answer before the next
    # request is even parsed, and the requests must run together.
    slow_decode = engine.session.decode
    monkeypatch.setattr(engine.session, "decode", lambda rows, tokens: (armed.is_set() and time.sleep(0.005))
                        or slow_decode(rows, tokens))
    if stage == "tokenizing":
        encode = engine.tokenizer.encode
        monkeypatch.setattr(engine.tokenizer, "encode", lambda text, *a, **k: hit(POISON in text) or encode(text, *a, **k))
    elif stage == "templating":
        render = engine.apply_chat_template
        monkeypatch.setattr(engine, "apply_chat_template", lambda messages, *a, **k: hit(
            any(POISON in m["content"] for m in messages)) or render(messages, *a, **k))
    elif stage == "grammar compile":
        compile_ = Grammars.checked_constraint
        monkeypatch.setattr(Grammars, "checked_constraint", lambda self, g: hit(True) or compile_(self, g))
    elif stage == "mask":
        allowed, masks = GrammarConstraint.allowed, {}

        def failing_allowed(self, size):
            if threading.current_thread().name == "model-worker":  # mid-answer, not while preparing
                masks[id(self)] = masks.get(id(self), 0) + 1
                hit(masks[id(self)] >= 3)
            return allowed(self, size)
        monkeypatch.setattr(GrammarConstraint, "allowed", failing_allowed)
    elif stage == "prefill":
        feed = Row.feed

        def failing_feed(self, ids, want_logits):
            request = engine.scheduler.slots[self.index].request
            hit(request is not None and poisoned(request))
            return feed(self, ids, want_logits)
        monkeypatch.setattr(Row, "feed", failing_feed)
    elif stage == "decode":
        decode = engine.session.decode
        monkeypatch.setattr(engine.session, "decode", lambda rows, tokens: hit(any(
            engine.scheduler.slots[r].request is not None and poisoned(engine.scheduler.slots[r].request)
            for r in rows)) or decode(rows, tokens))
    elif stage == "detokenizing":
        init, add = Generation.__init__, Detokenizer.add

        def marking_init(self, prompt_ids, params, *a):
            init(self, prompt_ids, params, *a)
            self.detokenizer.poisoned = poisoned(self)

        monkeypatch.setattr(Generation, "__init__", marking_init)
        monkeypatch.setattr(Detokenizer, "add", lambda self, token: hit(getattr(self, "poisoned", False))
                            or add(self, token))
    elif stage == "streaming":
        feed_answer = ChatAnswer.feed
        monkeypatch.setattr(ChatAnswer, "feed", lambda self, i, delta: hit(self.include_usage)
                            or feed_answer(self, i, delta))
    elif stage == "cancel":
        cancel = engine.cancel
        monkeypatch.setattr(engine, "cancel", lambda g: hit(poisoned(g)) or cancel(g))


def send_poisoned(stage: str, url: str) -> str:
    if stage in ("grammar compile", "mask"):
        return str(chat(url, POISON, 7, response_format={"type": "json_object"}))
    if stage == "streaming":
        return poisoned_stream(url, None, stream_options={"include_usage": True})
    if stage == "cancel":
        return poisoned_stream(url, 3)
    return str(chat(url, POISON, 7))


@pytest.mark.parametrize("kind", ["cpu graph", "npu graph", "pytorch",
                                  pytest.param("acl", marks=pytest.mark.emulator)])
@pytest.mark.parametrize("stage", STAGES)
def test_a_fault_in_one_request_fails_it_alone(kind, stage, tiny_model_dir, graphs, request, monkeypatch):
    engine = engine_for(kind, tiny_model_dir, graphs, request)
    armed = threading.Event()
    inject(stage, engine, monkeypatch, armed)
    try:
        with running(engine, "tiny") as url:
            alone = [chat(url, text) for text in NORMAL]
            assert all(status == 200 and text for status, text in alone), alone
            armed.set()
            with ThreadPoolExecutor(4) as pool:
                poison = pool.submit(send_poisoned, stage, url)
                together = [pool.submit(chat, url, text) for text in NORMAL]
                got = [f.result() for f in together]
                bad = poison.result()
            armed.clear()
            assert got == alone, f"{stage}: the others' answers changed"
            if stage != "cancel":  # a client that left gets nothing; the others must not notice
                assert ("200" not in bad[:6] and '"finish_reason": "length"' not in bad
                        and '"finish_reason":"length"' not in bad), f"{stage}: the poisoned request did not fail: {bad}"
            health = idle_health(url)
            assert health.status_code == 200 and health.json()["status"] == "ok"
            assert health.json()["free_slots"] == 4 and health.json()["engine_restarts"] == 0
            assert health.json()["peak_busy_slots"] >= 3  # they did run together
            assert [chat(url, text) for text in NORMAL] == alone
            assert chat(url, POISON, 7)[0] == 200  # disarmed, the poisoned request is an ordinary one
    finally:
        if kind == "acl":
            engine.session.close()
