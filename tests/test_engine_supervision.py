"""The model thread is supervised: a failure outside any request fails what was running and the engine starts
again; repeated failures declare it dead and /health says so (503) instead of "ok"; a step that never returns
is reported as stalled; the event loop never waits for a request's preparation."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from api_helpers import running
from config import InferenceConfig
from inference import Inference
from server import chat as chat_door


@pytest.fixture
def engine(tiny_model_dir, cpu_onnx_of) -> Inference:
    return Inference(InferenceConfig.create(tiny_model_dir, session_type="onnx", cpu_thread=1, max_batch=2,
                                            onnx_model_path=str(cpu_onnx_of(tiny_model_dir, 256)),
                                            kv_cache_length=256, max_input_length=200))


def ask(url: str, text: str = "hello there", max_tokens: int = 8) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def test_a_failure_outside_any_request_restarts_the_engine(engine, monkeypatch):
    with running(engine, "tiny") as url:
        first = ask(url).json()["choices"][0]["message"]["content"]
        step, failures = engine.step, []

        def failing_step(first_tokens=None):
            if not failures:
                failures.append(1)
                raise RuntimeError("the engine's own bookkeeping broke")
            return step(first_tokens)

        monkeypatch.setattr(engine, "step", failing_step)
        r = ask(url)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        health = httpx.get(url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["engine_restarts"] == 1 and health.json()["free_slots"] == 2
        assert ask(url).json()["choices"][0]["message"]["content"] == first


def test_an_engine_that_keeps_failing_is_reported_dead(engine, monkeypatch):
    with running(engine, "tiny") as url:
        assert ask(url).status_code == 200

        def broken(first_tokens=None):
            raise RuntimeError("broken for good")

        monkeypatch.setattr(engine, "step", broken)
        codes = [ask(url).status_code for _ in range(6)]
        assert codes[:5] == [500] * 5 and codes[5] == 503
        health = httpx.get(url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert "failed 5 times" in health.json()["problem"]
        r = ask(url)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"


def test_a_step_that_does_not_return_is_reported_as_stalled(engine, monkeypatch):
    release = threading.Event()
    step = engine.step

    def stuck_step(first_tokens=None):
        release.wait(30)
        return step(first_tokens)

    with running(engine, "tiny", watchdog_s=0.3) as url:
        monkeypatch.setattr(engine, "step", stuck_step)
        asking = threading.Thread(target=ask, args=(url,))
        asking.start()
        try:
            deadline = time.monotonic() + 10
            while (health := httpx.get(url + "/health", timeout=10)).status_code == 200:
                assert time.monotonic() < deadline, "the watchdog never noticed"
                time.sleep(0.1)
            assert health.status_code == 503 and "over 0.3 s" in health.json()["problem"]
        finally:
            release.set()
            asking.join(timeout=30)
        assert httpx.get(url + "/health", timeout=10).status_code == 200


def test_the_event_loop_answers_while_a_request_is_prepared(engine, monkeypatch):
    """Templates, tokens and grammars are prepared beside the event loop: a request whose preparation takes
    long (thousands of tools once froze /health for seconds) does not hold up anyone else."""
    entered, release = threading.Event(), threading.Event()
    plan = chat_door.plan

    def slow_plan(req, ctx, check_grammar=True):
        if req.messages[0].content == "slow to prepare":
            entered.set()
            release.wait(30)
        return plan(req, ctx, check_grammar)

    monkeypatch.setattr(chat_door, "plan", slow_plan)
    with running(engine, "tiny") as url:
        slow = threading.Thread(target=ask, args=(url, "slow to prepare"))
        slow.start()
        try:
            assert entered.wait(30)
            assert httpx.get(url + "/health", timeout=5).status_code == 200
            assert ask(url).status_code == 200  # the other preparing thread serves this one
        finally:
            release.set()
            slow.join(timeout=30)
