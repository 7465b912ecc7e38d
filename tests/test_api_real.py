"""End to end on the real default model, served as `make serve` does (the cpu graph with its int4
quantization drafting): the three example clients, and a tool call the model really makes, streamed and
not, parsed into OpenAI's tool_calls."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from api_helpers import ROOT, serve, validate

pytestmark = pytest.mark.default_model

WEATHER_TOOL = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "city name"}},
                   "required": ["city"]}}}]


@pytest.fixture(scope="module")
def server(default_model_dir, default_cpu_onnx, default_cpu_int4, tmp_path_factory):
    args = ["api.py", "--hf_model_dir", str(default_model_dir), "--onnx_model_path", str(default_cpu_onnx),
            "--draft_onnx_model_path", str(default_cpu_int4), "--max_prefill_length", "64"]
    with serve(args, tmp_path_factory.mktemp("real-api")) as s:
        yield s


def run_client(server, script: str, *extra: str) -> str:
    out = subprocess.run([sys.executable, f"client/{script}", "--base_url", server.base_url, "--temperature", "0",
                          *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_model_weather_question_becomes_a_tool_call(client) -> None:
    messages = [{"role": "user", "content": "What's the weather like in Paris today?"}]
    r = client.chat.completions.create(model=client.models.list().data[0].id, messages=messages,
                                       tools=WEATHER_TOOL, temperature=0, max_tokens=60)
    validate(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris"
    stream = client.chat.completions.create(model=r.model, messages=messages, tools=WEATHER_TOOL, temperature=0,
                                            max_tokens=60, stream=True)
    chunks = list(stream)
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, tc.function.arguments) for tc in calls] == [("get_weather", call.function.arguments)]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_function_call_client_round_trip(server) -> None:
    # one tool keeps the prompt inside the test export's 256-token cache
    out = run_client(server, "openai_function_call.py", "--tools", "get_weather")
    assert 'tool call: get_weather({"city": "Paris"})' in out
    answer = out.split("assistant: ", 1)[1]
    assert "22" in answer or "sunny" in answer.lower()


def test_normal_and_stream_clients_answer(server) -> None:
    assert "Paris" in run_client(server, "openai_normal_client.py", "--max_tokens", "30")
    out = run_client(server, "openai_stream_client.py", "--max_tokens", "30")
    assert len(out.splitlines()[0].strip()) > 0 and "[finish:" in out


def test_concurrent_greedy_answers_equal_the_answers_alone(server, client) -> None:
    """Three clients at once on the real model (api.py's CPU default of 4 slots): each answer is the one it
    gets alone, where the int4 draft decodes speculatively; together they decode as a batch."""
    from concurrent.futures import ThreadPoolExecutor

    model = client.models.list().data[0].id
    questions = ["What is a python list?", "Say hello in French.", "Name a prime number."]

    def ask(question: str) -> str:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           temperature=0, max_tokens=12)
        return r.choices[0].message.content

    alone = [ask(q) for q in questions]
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(ask, questions))
    assert together == alone and all(alone)
    assert server.health()["peak_busy_slots"] >= 2
