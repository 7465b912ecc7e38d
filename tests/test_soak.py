"""A soak: four clients send a mix of valid, malformed, cancelled and oversized requests to api.py (tiny model,
cpu graph, an API key, four slots) for a few minutes. Nothing may get a 5xx, the server must end idle with
every slot free, give the greedy answer it gave at the start, and hold no more memory than a bound above what
it held after warming up."""
from __future__ import annotations

import random
import threading
import time
from collections import Counter

import httpx
import psutil
import pytest

from api_helpers import serve, tiny_server_args

pytestmark = pytest.mark.slow

KEY = "sk-soak"
AUTH = {"Authorization": f"Bearer {KEY}"}
SOAK_S = 150
RSS_SLACK_MB = 80  # allocator noise and onnxruntime's arenas; a leak per request would pass it in minutes


def _chat(text: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 24, "temperature": 0, **extra}


def one_request(url: str, rng: random.Random) -> str:
    """Send one request of a random kind; returns "kind status"."""
    kind = rng.choice(["chat", "stream", "legacy", "bad json", "surrogate", "strict", "too big", "bad schema",
                       "too many", "cancelled", "no key"])
    headers = {**AUTH, "content-type": "application/json"}
    if kind == "cancelled":
        with httpx.stream("POST", url + "/chat/completions", json=_chat("tell me a story", stream=True,
                          max_tokens=200), headers=AUTH, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines, None)
        return f"{kind} {r.status_code}"
    if kind == "stream":
        with httpx.stream("POST", url + "/chat/completions", json=_chat("count", stream=True), headers=AUTH,
                          timeout=120) as r:
            body = "".join(r.iter_lines())
        assert "[DONE]" in body or r.status_code != 200
        return f"{kind} {r.status_code}"
    requests = {
        "chat": lambda: httpx.post(url + "/chat/completions", json=_chat(f"hi {rng.randint(0, 9)}"), headers=AUTH,
                                   timeout=120),
        "legacy": lambda: httpx.post(url + "/completions", json={"prompt": ["a", "b"], "n": 2, "max_tokens": 8},
                                     headers=AUTH, timeout=120),
        "bad json": lambda: httpx.post(url + "/chat/completions", content=b'{"messages": [', headers=headers,
                                       timeout=60),
        "surrogate": lambda: httpx.post(url + "/completions", content=b'{"prompt": "x\\ud800"}', headers=headers,
                                        timeout=60),
        "strict": lambda: httpx.post(url + "/chat/completions", json=_chat("hi", max_tokens=True), headers=AUTH,
                                     timeout=60),
        "too big": lambda: httpx.post(url + "/chat/completions", json=_chat("x" * (2 << 20)), headers=AUTH,
                                      timeout=60),
        "bad schema": lambda: httpx.post(url + "/chat/completions", headers=AUTH, timeout=60, json=_chat(
            "json", response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {"$ref": "#"}}})),
        "too many": lambda: httpx.post(url + "/completions", json={"prompt": ["x"] * 100, "n": 16}, headers=AUTH,
                                       timeout=60),
        "no key": lambda: httpx.post(url + "/chat/completions", json=_chat("hi"), timeout=60),
    }
    return f"{kind} {requests[kind]().status_code}"


def test_a_mixed_soak_ends_idle_with_the_same_answer_and_bounded_memory(tiny_model_dir, cpu_onnx_of, tmp_path):
    args = [a for a in tiny_server_args(tiny_model_dir, cpu_onnx_of(tiny_model_dir, 512))
            if a not in ("--kv_cache_method", "basic")]
    with serve(args + ["--api_key", KEY, "--max_batch", "4", "--max_prefill_length", "8"], tmp_path) as server:
        url = server.base_url

        def greedy() -> str:
            r = httpx.post(url + "/chat/completions", json=_chat("Say something."), headers=AUTH, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"]

        first = greedy()
        process = psutil.Process(server.proc.pid)
        rng = random.Random(0)
        for _ in range(40):  # warm-up: every kind of request once or more
            one_request(url, rng)
        warm_rss = process.memory_info().rss
        seen: Counter = Counter()
        failures: list[str] = []
        deadline = time.monotonic() + SOAK_S

        def client(seed: int) -> None:
            r = random.Random(seed)
            while time.monotonic() < deadline:
                try:
                    seen[one_request(url, r)] += 1
                except Exception as e:  # a dropped connection or a broken stream is a failure here
                    failures.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SOAK_S + 120)
        assert not failures, failures[:5]
        assert not [k for k in seen if k.split()[-1].startswith("5")], seen
        assert sum(seen.values()) > 200 and len({k.rsplit(" ", 1)[0] for k in seen}) == 11, seen
        health = server.wait_idle()
        assert (health["status"], health["busy_slots"], health["queued"], health["free_slots"]) == ("ok", 0, 0, 4)
        assert health["engine_restarts"] == 0
        assert greedy() == first
        assert process.memory_info().rss - warm_rss < RSS_SLACK_MB << 20
