"""/metrics: Prometheus's text format from the app's own registry (two apps in one process count apart),
with counters that move after requests: requests by endpoint and status, prompt and completion tokens (the
usage the responses report), KV-cache tokens reused, time to first token and per-token histograms, and the
queue and slot gauges. Runs the real app in-process on the scripted session (tests/scripted_session.py)."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from scripted_session import scripted_inference
from server.app import create_app

P = "qwen_ascend_llm_"


def samples(client: TestClient) -> dict[tuple, float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(snapshot: dict, name: str, **labels) -> float:
    return snapshot.get((P + name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def inference(tiny_model_dir):
    return scripted_inference(str(tiny_model_dir))


def chat(client: TestClient, text: str, **kw) -> dict:
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": text}], **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_counters_move_with_requests(inference):
    with TestClient(create_app(inference, "m", no_web_ui=True, allowed_hosts="testserver")) as client:
        before = samples(client)
        assert value(before, "busy_slots") == 0 and value(before, "queue_length") == 0
        first = chat(client, "count")
        second = chat(client, "count")  # the same prompt again: found in the KV cache
        streamed = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "count"}],
                                                             "stream": True})
        assert streamed.status_code == 200
        assert client.post("/v1/chat/completions", json={"model": "other", "messages": [
            {"role": "user", "content": "x"}]}).status_code == 404
        assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 400
        assert client.get("/v1/models").status_code == 200
        after = samples(client)
    chat_ok = dict(endpoint="/v1/chat/completions", status="200")
    assert value(after, "requests_total", **chat_ok) - value(before, "requests_total", **chat_ok) == 3
    assert value(after, "requests_total", endpoint="/v1/chat/completions", status="404") == 1
    assert value(after, "requests_total", endpoint="/v1/chat/completions", status="400") == 1
    assert value(after, "requests_total", endpoint="/v1/models", status="200") == 1
    prompt = first["usage"]["prompt_tokens"]
    completion = first["usage"]["completion_tokens"]
    assert completion > 5
    assert value(after, "prompt_tokens_total") - value(before, "prompt_tokens_total") == 3 * prompt
    assert value(after, "completion_tokens_total") - value(before, "completion_tokens_total") == 3 * completion
    reused = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert reused > 0
    assert value(after, "kv_cache_reused_tokens_total") - value(before, "kv_cache_reused_tokens_total") >= 2 * reused
    assert value(after, "time_to_first_token_seconds_count") == 3
    assert value(after, "time_per_output_token_seconds_count") == 3
    assert value(after, "time_to_first_token_seconds_sum") > 0
    assert value(after, "busy_slots") == 0 and value(after, "queue_length") == 0


def test_two_apps_count_apart_and_n_counts_the_prompt_once(inference):
    with TestClient(create_app(inference, "a", no_web_ui=True, allowed_hosts="testserver")) as a, TestClient(create_app(inference, "b", no_web_ui=True, allowed_hosts="testserver")) as b:
        one = chat(a, "count", n=2)
        assert len(one["choices"]) == 2
        in_a, in_b = samples(a), samples(b)
    assert value(in_a, "requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert value(in_b, "requests_total", endpoint="/v1/chat/completions", status="200") == 0
    assert value(in_a, "prompt_tokens_total") == one["usage"]["prompt_tokens"]
    assert value(in_a, "completion_tokens_total") == one["usage"]["completion_tokens"]
    assert value(in_a, "time_to_first_token_seconds_count") == 2
