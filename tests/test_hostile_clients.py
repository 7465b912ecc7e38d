"""Requests of a few hundred bytes that once took the server down, sent to api.py (tiny model, cpu graph, an
API key, four slots) as a careless client or an attacker would: each gets a 4xx in OpenAI's error shape, and
the server keeps answering as it did. Slow and hostile connections are cut by the server's own timeouts."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from api_helpers import fake_server_args, serve, tiny_server_args, validate

KEY = "sk-hostile"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT_S = 2  # the server's header and body timeouts here


@pytest.fixture(scope="module")
def server(tiny_model_dir, cpu_onnx_of, tmp_path_factory):
    args = [a for a in tiny_server_args(tiny_model_dir, cpu_onnx_of(tiny_model_dir, 512))
            if a not in ("--kv_cache_method", "basic")]
    args += ["--api_key", KEY, "--max_batch", "4", "--max_prefill_length", "8", "--header_timeout_s", str(TIMEOUT_S),
             "--body_timeout_s", str(TIMEOUT_S)]
    with serve(args, tmp_path_factory.mktemp("hostile")) as s:
        yield s


def raw(server, path: str, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(server.base_url + path, content=body, timeout=120,
                      headers={**AUTH, "content-type": "application/json", **(headers or {})})


def greedy(server) -> str:
    body = {"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 16, "temperature": 0}
    r = httpx.post(server.base_url + "/chat/completions", json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def first_answer(server) -> str:
    return greedy(server)


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return validate(r.json(), "ErrorResponse")["error"]


def test_a_lone_surrogate_in_a_prompt_is_a_400_and_the_server_answers_next(server, first_answer):
    r = raw(server, "/completions", b'{"prompt": "x\\ud800", "max_tokens": 4}')
    assert error_of(r, 400)["param"] == "prompt"
    for _ in range(3):  # once the model thread died on it; every later answer hung
        assert greedy(server) == first_answer
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("body,param", [
    (b'{"model": "m\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1\\udc00": 5}}', "logit_bias"),
    (b'{"messages": [{"role": "user", "content": "hi\\udfff"}]}', "messages.0.content"),
])
def test_lone_surrogates_anywhere_are_a_400_naming_the_field(server, body, param):
    assert error_of(raw(server, "/chat/completions", body), 400)["param"].startswith(param)


def test_self_referencing_schemas_end_their_own_requests_and_nobody_else_waits(server, first_answer):
    schemas = [{"$ref": "#"},
               {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
               {"type": "object", "properties": {"x": {"$ref": "#"}}, "required": ["x"]},
               {"anyOf": [{"$ref": "#"}, {"$ref": "#"}]}]

    def ask(schema: dict) -> tuple[float, httpx.Response]:
        body = {"messages": [{"role": "user", "content": "JSON please"}], "max_tokens": 32,
                "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}
        start = time.monotonic()
        r = httpx.post(server.base_url + "/chat/completions", json=body, headers=AUTH, timeout=120)
        return time.monotonic() - start, r

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(ask, schemas))
    for took, r in results:
        # either refused before the engine, or answered: never left holding a slot without an answer
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:
            assert error_of(r, 400)["param"] == "response_format"
        assert took < 60
    assert greedy(server) == first_answer
    assert server.wait_idle()["free_slots"] == 4


def test_thousands_of_tools_are_refused_by_openais_limit(server):
    tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}} for i in range(3000)]
    r = httpx.post(server.base_url + "/chat/completions", headers=AUTH, timeout=120,
                   json={"messages": [{"role": "user", "content": "hi"}], "tools": tools})
    assert error_of(r, 400)["param"].startswith("tools")
    assert server.health()["status"] == "ok"


def test_a_request_for_thousands_of_completions_is_refused(server):
    body = {"prompt": ["hi there"] * 3000, "n": 16, "max_tokens": 4}
    err = error_of(httpx.post(server.base_url + "/completions", json=body, headers=AUTH, timeout=120), 400)
    assert "64" in err["message"] and err["param"] == "prompt"


def test_a_request_with_many_choices_shares_the_slots_with_a_newcomer(server, first_answer):
    """64 generations from one client, then one chat from another: the chat is answered while the big request
    still runs, not after its 64 answers."""
    big = {"prompt": [f"Count to {i}:" for i in range(16)], "n": 4, "max_tokens": 300, "temperature": 0,
           "ignore_eos": True}  # every answer runs its whole length
    finished: dict[str, float] = {}

    def send_big() -> None:
        r = httpx.post(server.base_url + "/completions", json=big, headers=AUTH, timeout=300)
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"]) == 64
        finished["big"] = time.monotonic()

    thread = threading.Thread(target=send_big)
    thread.start()
    time.sleep(0.3)
    assert greedy(server) == first_answer
    finished["chat"] = time.monotonic()
    thread.join(timeout=300)
    assert finished["chat"] < finished["big"]


def test_strict_types_refuse_what_other_servers_coerce(server):
    for field, value in (("max_tokens", True), ("stream", "yes"), ("n", "3"), ("temperature", "0.5")):
        body = {"messages": [{"role": "user", "content": "hi"}], field: value}
        r = httpx.post(server.base_url + "/chat/completions", json=body, headers=AUTH, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, r.text)


def test_logit_bias_is_limited_to_openais_300_entries(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "logit_bias": {str(i): 1 for i in range(301)}}
    r = httpx.post(server.base_url + "/chat/completions", json=body, headers=AUTH, timeout=60)
    assert error_of(r, 400)["param"] == "logit_bias"


def test_api_pages_loading_scripts_from_a_cdn_are_off(server):
    assert httpx.get(server.url + "/docs", timeout=10).status_code == 404
    assert httpx.get(server.url + "/redoc", timeout=10).status_code == 404


def _connect(server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    s.settimeout(30)
    return s


def test_an_unauthenticated_body_that_never_comes_is_refused_at_once(server):
    with _connect(server) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1048576\r\n\r\n")
        s.settimeout(5)  # well under the body timeout: the key is checked before any body is read
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 401"), head[:200]


def test_an_authenticated_body_that_stalls_is_refused_after_the_body_timeout(server):
    with _connect(server) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"messages\": ")
        start = time.monotonic()
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 408"), head[:200]
    assert time.monotonic() - start < 10 * TIMEOUT_S


def test_connections_that_never_finish_their_headers_are_closed(server, first_answer):
    sockets = [_connect(server) for _ in range(20)]
    try:
        for s in sockets:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        start = time.monotonic()
        for s in sockets:
            s.settimeout(max(0.1, 10 * TIMEOUT_S - (time.monotonic() - start)))
            assert s.recv(4096) == b"", "the server answered a request whose headers never ended"
        assert time.monotonic() - start < 10 * TIMEOUT_S
        assert greedy(server) == first_answer
    finally:
        for s in sockets:
            s.close()


def test_the_server_ends_idle_with_the_answer_it_gave_first(server, first_answer):
    """Run last in this module: after everything above, nothing is left running or queued."""
    h = server.wait_idle()
    assert (h["status"], h["busy_slots"], h["queued"], h["free_slots"]) == ("ok", 0, 0, 4)
    assert greedy(server) == first_answer


@pytest.fixture(scope="module")
def scripted(tiny_model_dir, tmp_path_factory):
    """One slot, scripted answers (tests/scripted_session.py): a 'slow' answer keeps it busy for seconds."""
    with serve(fake_server_args(tiny_model_dir), tmp_path_factory.mktemp("scripted-hostile")) as s:
        yield s


def test_a_queued_stream_gets_its_headers_while_it_waits(scripted):
    body = {"messages": [{"role": "user", "content": "slow"}], "stream": True, "max_tokens": 2000}
    with httpx.stream("POST", scripted.base_url + "/chat/completions", json=body, timeout=60) as busy:
        lines = busy.iter_lines()  # kept: a closed line iterator closes the stream, and the job is cancelled
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["choices"][0]["delta"]["role"] == "assistant"
        waiting = {**body, "messages": [{"role": "user", "content": "count"}]}
        start = time.monotonic()
        with httpx.stream("POST", scripted.base_url + "/chat/completions", json=waiting, timeout=60) as queued:
            assert queued.status_code == 200 and queued.headers["content-type"].startswith("text/event-stream")
            assert time.monotonic() - start < 5  # the slow answer has seconds to go: the headers did not wait
            assert scripted.health()["queued"] == 1


def test_a_foreign_host_is_refused_by_a_loopback_server_without_a_key(scripted):
    body = {"messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(scripted.base_url + "/chat/completions", json=body, headers={"Host": "attacker.example"}, timeout=30)
    assert error_of(r, 400)["code"] == "invalid_host"
    assert httpx.get(scripted.url + "/health", headers={"Host": "attacker.example:8000"}, timeout=10).status_code == 400
    ok = httpx.post(scripted.base_url + "/chat/completions", json=body, headers={"Host": "localhost:1234"}, timeout=30)
    assert ok.status_code == 200
