"""Shared by the API tests: run a server in a subprocess on a free port, and check response bodies
against OpenAI's published schema (tests/data/openai/chat-completions.schema.json)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import httpx
import jsonschema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(__file__).resolve().parent / "data" / "openai" / "chat-completions.schema.json"
PY = sys.executable


def _die_with_parent() -> None:
    # A test run that is killed must not leave servers behind (Linux: PR_SET_PDEATHSIG = 1).
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    check = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{name}"}
    return jsonschema.Draft202012Validator(check)


def validate(body: dict, name: str) -> dict:
    """name: CreateChatCompletionResponse, CreateChatCompletionStreamResponse, CreateCompletionResponse,
    ListModelsResponse or ErrorResponse. Raises jsonschema.ValidationError on any mismatch."""
    _validator(name).validate(body)
    return body


@lru_cache(maxsize=None)
def _completion_chunk_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    defs = schema["$defs"]
    choice = defs["CreateCompletionResponse"]["properties"]["choices"]["items"]["properties"]
    choice["finish_reason"] = {"anyOf": [choice["finish_reason"], {"type": "null"}]}
    return jsonschema.Draft202012Validator({"$schema": schema["$schema"], "$defs": defs,
                                            "$ref": "#/$defs/CreateCompletionResponse"})


def validate_completion_chunk(body: dict) -> dict:
    """A streamed /v1/completions chunk: CreateCompletionResponse, except that finish_reason is null until a
    choice's last chunk, as OpenAI sends it (the spec says "the same shape" and forgets that one null)."""
    _completion_chunk_validator().validate(body)
    return body


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + "/v1"

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def wait_idle(self, timeout_s: float = 60) -> dict:
        """Health once the worker has nothing to do (bounded wait, then the last answer)."""
        deadline = time.monotonic() + timeout_s
        while True:
            h = self.health()
            if (not h["busy"] and h["queued"] == 0) or time.monotonic() > deadline:
                return h
            time.sleep(0.05)


@contextmanager
def running(engine, model_name: str, **options) -> Iterator[str]:
    """api.py's app on `engine`, served by uvicorn on a thread of this process (so that a test can patch the
    code it runs); yields its base URL. options: ServerOptions fields."""
    import threading

    import uvicorn

    from server.app import create_app
    from server.transport import guarded_protocol

    config = uvicorn.Config(create_app(engine, model_name, **options), host="127.0.0.1", port=free_port(),
                            log_level="warning", http=guarded_protocol(30.0), lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve(args: list[str], tmp: Path, startup_s: float = 300) -> Iterator[Server]:
    """Start `python <args> --port N`, wait for uvicorn's ready line, stop it afterwards."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([PY, *args, "--port", str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=env, preexec_fn=_die_with_parent)
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + startup_s
        while "Uvicorn running on" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fake_server_args(model_dir: Path, *extra: str) -> list[str]:
    """tests/fake_api_server.py: the real app and Inference on a ScriptedSession over model_dir's tokenizer."""
    return ["tests/fake_api_server.py", "--model_dir", str(model_dir), *extra]


def tiny_server_args(model_dir: Path, onnx: Path, *extra: str) -> list[str]:
    return ["api.py", "--hf_model_dir", str(model_dir), "--onnx_model_path", str(onnx), "--served_model_name", "tiny",
            "--kv_cache_method", "basic", "--cpu_thread", "1", *extra]


def sse_chunks(text: str) -> list[dict | str]:
    """The data payloads of an SSE body, decoded; the closing [DONE] stays a string."""
    out: list[dict | str] = []
    for line in text.splitlines():
        if line.startswith("data:"):
            payload = line[5:].strip()
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def prompt_tokens(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> int:
    """How many tokens the server's prompt for these messages has: the chat template, then the tokenizer."""
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    return len(tokenizer.encode(text, add_special_tokens=False))


def user(text: str) -> list[dict]:
    """One user message, the whole of a chat."""
    return [{"role": "user", "content": text}]
