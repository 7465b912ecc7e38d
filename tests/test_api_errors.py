"""Bad requests get a 4xx in OpenAI's error shape, and the server keeps serving afterwards.
Runs the real server process and Inference on a ScriptedSession, with an API key, a one-slot queue and a
short prompt limit so that every refusal path is reachable."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from api_helpers import fake_server_args, prompt_tokens, serve, validate

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_INPUT = 200


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    args = fake_server_args(tiny_model_dir, "--api_key", KEY, "--max_queue", "1", "--max_input_length", str(MAX_INPUT))
    with serve(args, tmp_path_factory.mktemp("fake-errors")) as s:
        yield s


def post(server, body=None, content=None, headers=AUTH, path="/chat/completions") -> httpx.Response:
    extra = {"content-type": "application/json"} if content is not None else {}
    return httpx.post(server.base_url + path, json=body, content=content, headers={**headers, **extra}, timeout=60)


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = validate(r.json(), "ErrorResponse")["error"]
    if code is not None:
        assert err["code"] == code
    return err


def assert_still_serving(server) -> None:
    assert server.health()["status"] == "ok"
    r = post(server, {"messages": [{"role": "user", "content": "ping"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "You said: ping"


MSG = [{"role": "user", "content": "hi"}]
BAD = {
    "bad json": (None, b'{"messages": [', 400),
    "not an object": (None, b"[1, 2, 3]", 400),
    "messages not a list": ({"messages": "hello"}, None, 400),
    "message not an object": ({"messages": ["hello"]}, None, 400),
    "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, None, 400),
    "content a number": ({"messages": [{"role": "user", "content": 42}]}, None, 400),
    "empty messages": ({"messages": []}, None, 400),
    "missing messages": ({"model": "fake-model"}, None, 400),
    "temperature a word": ({"messages": MSG, "temperature": "hot"}, None, 400),
    "temperature too high": ({"messages": MSG, "temperature": 7}, None, 400),
    "max_tokens zero": ({"messages": MSG, "max_tokens": 0}, None, 400),
    "max_tokens huge": ({"messages": MSG, "max_tokens": 10**12}, None, 400),
    "max_tokens beyond int64": ({"messages": MSG, "max_tokens": 10**30}, None, 400),
    "n too many": ({"messages": MSG, "n": 17}, None, 400),
    "five stops": ({"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, None, 400),
    "image part": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
                   None, 400),
    "tool_choice unknown tool": ({"messages": MSG, "tool_choice": {"type": "function", "function": {"name": "x"}},
                                  "tools": [{"type": "function", "function": {"name": "y"}}]}, None, 400),
    "tools and functions": ({"messages": MSG, "tools": [{"type": "function", "function": {"name": "y"}}],
                             "functions": [{"name": "y"}]}, None, 400),
    "seed a list": ({"messages": MSG, "seed": [1]}, None, 400),
}


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_request_gets_4xx_and_server_survives(server, name) -> None:
    body, content, status = BAD[name]
    err = assert_error(post(server, body, content), status)
    assert err["message"] and err["type"] == "invalid_request_error"
    assert_still_serving(server)


def test_huge_max_tokens_says_the_limit(server) -> None:
    err = assert_error(post(server, {"messages": MSG, "max_tokens": 10**12}), 400)
    assert "4096" in err["message"] and err["param"] == "max_tokens"


def test_ten_megabyte_body_is_413(server) -> None:
    big = {"messages": [{"role": "user", "content": "x" * (10 << 20)}]}
    assert_error(post(server, big), 413, "request_too_large")
    assert_still_serving(server)


def test_prompt_longer_than_the_limit_is_400_with_numbers(server, tiny_model_dir) -> None:
    messages = [{"role": "user", "content": "y" * 500}]
    err = assert_error(post(server, {"messages": messages}), 400, "context_length_exceeded")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    assert str(MAX_INPUT) in err["message"] and f"are {prompt_tokens(tokenizer, messages)} tokens" in err["message"]
    assert_still_serving(server)


def test_lone_surrogate_text_is_a_4xx_not_a_crash(server) -> None:
    r = post(server, content=b'{"messages": [{"role": "user", "content": "\\ud800 broken"}]}')
    assert 400 <= r.status_code < 500, r.text
    assert_still_serving(server)


def test_unknown_model_is_404(server) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MSG)
    assert e.value.code == "model_not_found"


def test_unknown_route_and_wrong_method(server) -> None:
    assert_error(httpx.get(server.base_url + "/nothing-here", headers=AUTH), 404)
    r = httpx.get(server.base_url + "/chat/completions", headers=AUTH)
    assert_error(r, 405)
    assert r.headers["allow"] == "POST"


def test_api_key_is_required(server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        assert_error(post(server, {"messages": MSG}, headers=headers), 401, "invalid_api_key")
        assert_error(httpx.get(server.base_url + "/models", headers=headers), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="nope", max_retries=0).models.list()
    assert openai.OpenAI(base_url=server.base_url, api_key=KEY).models.list().data[0].id == "fake-model"
    assert httpx.get(server.url + "/health").status_code == 200  # liveness needs no key


def test_full_queue_is_429_then_recovers(server) -> None:
    """One request generating, one waiting in the single queue slot: the third is refused."""
    slow = {"messages": [{"role": "user", "content": "slow"}], "stream": True}
    with httpx.stream("POST", server.base_url + "/chat/completions", json=slow, headers=AUTH, timeout=60) as first:
        lines = first.iter_lines()  # kept referenced: a collected iterator closes the connection
        next(lines)  # generating now
        waiting_status: list[int] = []

        def second() -> None:
            with httpx.stream("POST", server.base_url + "/chat/completions", json={**slow, "max_tokens": 3},
                              headers=AUTH, timeout=60) as r:
                r.read()
                waiting_status.append(r.status_code)

        t = threading.Thread(target=second)
        t.start()
        deadline = time.monotonic() + 30
        while server.health()["queued"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = post(server, {"messages": MSG})
        assert_error(r, 429, "rate_limit_exceeded")
        assert r.headers.get("retry-after") == "1"
    t.join(timeout=60)  # closing the first stream frees the model for the waiting one
    assert waiting_status == [200]
    assert_still_serving(server)
