"""api.py serving several conversations at once (uvicorn subprocess, the tiny model's cpu graph, four
slots), through the openai package from concurrent threads: each answer equals the one it gets alone,
a client that leaves mid-answer frees its slot, conversations that take turns reuse their own cache,
requests beyond the slots wait, /health reports the slots."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from api_helpers import serve, tiny_server_args, user

MODEL = "tiny"
SLOTS = 4


@pytest.fixture(scope="module")
def server(tiny_model_dir, cpu_onnx_of, tmp_path_factory):
    onnx = cpu_onnx_of(tiny_model_dir, 512)
    args = [a for a in tiny_server_args(tiny_model_dir, onnx) if a not in ("--kv_cache_method", "basic")]
    with serve(args + ["--max_batch", str(SLOTS), "--max_prefill_length", "8"],
               tmp_path_factory.mktemp("batch-api")) as s:
        yield s


def ask(client, messages, max_tokens: int, delay: float = 0.0):
    time.sleep(delay)
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens)


# Long enough answers that they overlap on the server (the tiny model makes a token in well under a millisecond).
QUESTIONS = [("Hi.", 240), ("Write a long story about a dragon that learns to code in python, please.", 200),
             ("What is two plus two?", 260), ("List some colours: red, green, blue, and more of them.", 220)]


def test_health_reports_the_slots(server) -> None:
    h = server.wait_idle()
    assert (h["slots"], h["busy_slots"], h["free_slots"], h["busy"]) == (SLOTS, 0, SLOTS, False)
    assert h["peak_busy_slots"] <= 1  # nothing ran together yet


@pytest.mark.parametrize("n", range(2, SLOTS + 1))
def test_concurrent_answers_equal_the_answers_alone_with_one_client_leaving(server, client, n) -> None:
    alone = [ask(client, user(q), m) for q, m in QUESTIONS[:n]]
    assert all(a.choices[0].finish_reason == "length" for a in alone)
    before = server.wait_idle()
    left: list[str] = []

    def leaver() -> None:
        body = {"model": MODEL, "messages": user("Tell me everything about the sea."), "max_tokens": 400,
                "stream": True, "temperature": 0}
        with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=60) as r:
            lines = (line for line in r.iter_lines() if line.startswith("data:"))
            left.extend(json.loads(next(lines)[5:])["choices"][0]["delta"].get("content", "") for _ in range(6))

    leaving = threading.Thread(target=leaver)
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(ask, client, user(q), m, 0.02 * i) for i, (q, m) in enumerate(QUESTIONS[:n])]
        leaving.start()
        together = [f.result() for f in futures]
    leaving.join(timeout=60)
    for a, t in zip(alone, together):
        assert t.choices[0].message.content == a.choices[0].message.content
        assert t.usage.completion_tokens == a.usage.completion_tokens
    after = server.wait_idle()
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"] + n
    assert after["free_slots"] == SLOTS and len(left) == 6
    assert after["peak_busy_slots"] >= 2  # they did run together


def test_two_conversations_taking_turns_both_reuse_their_cache(client) -> None:
    chats = {"a": user("Please write a python function."), "b": user("Tell me a joke about cats.")}
    firsts = {}
    for name, messages in chats.items():
        firsts[name] = ask(client, messages, 12)
        chats[name] = messages + [{"role": "assistant", "content": firsts[name].choices[0].message.content}]
    with ThreadPoolExecutor(2) as pool:
        seconds = dict(zip(chats, pool.map(lambda m: ask(client, m + user("And once more?"), 8), chats.values())))
    for name in chats:
        assert seconds[name].usage.prompt_tokens_details.cached_tokens >= firsts[name].usage.prompt_tokens - 1


def test_requests_beyond_the_slots_wait_in_the_queue(server, client) -> None:
    prompts = [f"Question number {i}: say something." for i in range(3 * SLOTS)]
    alone = [ask(client, user(p), 12).choices[0].message.content for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: ask(client, user(p), 12).choices[0].message.content, prompts))
    assert together == alone
    assert server.wait_idle()["queued"] == 0
