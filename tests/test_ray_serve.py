"""deploy/ray_serve.py on a local Ray: two replicas of the tiny random model behind the Ray Serve ingress,
driven through the openai package. Answers equal one in-process engine's, a conversation's second turn
lands on the replica of its first (x-replica-id), and killing a replica under load loses no request that
had not started."""
from __future__ import annotations

import ast
import json
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from api_helpers import free_port, validate

import ray  # a test requirement (requirements-ray.txt, installed by make test): a missing Ray fails here
from ray import serve

from config import InferenceConfig
from deploy.ray_serve import APP_NAME, deploy, parse_args
from inference import Inference, SamplingParams

pytestmark = pytest.mark.ray

MODEL = "tiny"
KV_LEN = 512
MAX_TOKENS = 16
CONVERSATIONS = 40
TURN2 = "Now write it again, shorter."


def opening(i: int) -> list[dict]:
    return [{"role": "system", "content": f"You are assistant number {i % 3}."},
            {"role": "user", "content": f"Please write a python function number {i} that adds two numbers."}]


@pytest.fixture(scope="module")
def onnx(tiny_model_dir, cpu_onnx_of):
    return cpu_onnx_of(tiny_model_dir, KV_LEN)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, onnx):
    """`reference(messages)` -> the greedy answer of one in-process engine (what api.py serves)."""
    engine = Inference(InferenceConfig.create(tiny_model_dir, onnx_model_path=str(onnx), cpu_thread=1))
    params = SamplingParams(MAX_TOKENS, method="greedy", temperature=0)
    lock = threading.Lock()
    memo: dict[str, str] = {}

    def answer(messages: list[dict]) -> str:
        key = repr(messages)
        with lock:
            if key not in memo:
                memo[key] = "".join(d.text for d in engine.stream(engine.apply_chat_template(messages), params))
            return memo[key]

    return answer


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, onnx):
    """Ray on this machine (2 logical CPUs, no dashboard, small object store, its own short temp dir), the
    application deployed with two replicas; everything stopped at the end."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, _temp_dir=temp,
             log_to_driver=False, configure_logging=False)
    try:
        # max_ongoing_requests above the test's 40 requests: a busy replica keeps its conversations.
        deploy(parse_args(["--hf_model_dir", str(tiny_model_dir), "--onnx_model_path", str(onnx),
                           "--served_model_name", MODEL, "--port", str(port), "--replicas", "2",
                           "--num_cpus_per_replica", "1", "--max_ongoing_requests", "48"]))
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def client(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster + "/v1", api_key="unused", max_retries=0, timeout=300)


def ask(client: openai.OpenAI, messages: list[dict], stream: bool) -> tuple[str, str]:
    """(answer text, x-replica-id) of one greedy request."""
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, temperature=0,
                                                           max_tokens=MAX_TOKENS, stream=stream)
    replica = raw.headers["x-replica-id"]
    body = raw.parse()
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in body if c.choices), replica
    validate(body.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    return body.choices[0].message.content, replica


def replica_states() -> dict:
    return serve.status().applications[APP_NAME].deployments["ModelReplica"].replica_states


@pytest.fixture(scope="module")
def first_turns(client, reference):
    """40 conversations' first turns, sent at once, half of them streamed: [(answer, replica)]."""
    with ThreadPoolExecutor(CONVERSATIONS) as pool:
        return list(pool.map(lambda i: ask(client, opening(i), stream=i % 2 == 0), range(CONVERSATIONS)))


def test_forty_concurrent_requests_are_answered_as_one_engine_answers(first_turns, reference) -> None:
    for i, (answer, _) in enumerate(first_turns):
        assert answer == reference(opening(i)), f"conversation {i}"
    assert len({replica for _, replica in first_turns}) == 2  # both replicas served


def test_health_and_errors_are_the_apps_own(cluster, first_turns) -> None:
    health = httpx.get(cluster + "/health", timeout=30)
    body = health.json()
    assert health.status_code == 200 and body["status"] == "ok"
    assert body["replica_id"] == health.headers["x-replica-id"]
    assert body["replica_id"] in {replica for _, replica in first_turns}
    assert body["replica_actor"] == f"SERVE_REPLICA::{APP_NAME}#ModelReplica#{body['replica_id']}"
    wrong = httpx.post(cluster + "/v1/chat/completions", json={"model": "other", "messages": opening(0)}, timeout=30)
    assert wrong.status_code == 404 and validate(wrong.json(), "ErrorResponse")["error"]["code"] == "model_not_found"
    bad = httpx.post(cluster + "/v1/chat/completions", content=b"{not json", timeout=30,
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    assert httpx.get(cluster + "/v1/nowhere", timeout=30).status_code == 404


def turn(i: int, first_turns: list[tuple[str, str]], question: str) -> list[dict]:
    return [*opening(i), {"role": "assistant", "content": first_turns[i][0]}, {"role": "user", "content": question}]


def test_a_second_turn_lands_on_the_replica_of_the_first(client, first_turns, reference) -> None:
    def turn2(i: int) -> list[dict]:
        return turn(i, first_turns, TURN2)

    with ThreadPoolExecutor(CONVERSATIONS) as pool:
        second = list(pool.map(lambda i: ask(client, turn2(i), stream=i % 2 == 1), range(CONVERSATIONS)))
    for i, (answer, replica) in enumerate(second):
        assert replica == first_turns[i][1], f"conversation {i} moved"
        assert answer == reference(turn2(i)), f"conversation {i}"


def replicas_health(url: str) -> dict[str, dict]:
    """/health of the replicas a burst of concurrent checks reaches (the router spreads them), by replica id."""
    with ThreadPoolExecutor(8) as pool:
        return {h["replica_id"]: h for h in pool.map(lambda _: httpx.get(url + "/health", timeout=60).json(), range(8))}


def test_a_client_that_hangs_up_stops_its_answer_on_the_replica(cluster) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
            "max_tokens": 400, "temperature": 0, "stream": True}  # the tiny model runs to the limit here
    with httpx.stream("POST", cluster + "/v1/chat/completions", json=body, timeout=60) as r:
        replica = r.headers["x-replica-id"]
        assert any(line.startswith("data:") for line in r.iter_lines())  # the answer has begun; now hang up
    deadline = time.monotonic() + 120  # a bound on the wait, not a timing claim
    while True:
        health = replicas_health(cluster).get(replica)
        if health and health["cancelled"] == 1 and not health["busy"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert health is not None and health["cancelled"] == 1 and not health["busy"]


def test_killing_a_replica_under_load_loses_no_request_that_had_not_started(client, first_turns, reference) -> None:
    """Every conversation asks again: those kept on the victim (half of them, by affinity) queue there behind
    its 4 slots, so at the kill some run and the rest wait; the waiting ones must move to the survivor."""
    victim = first_turns[0][1]
    victim_started = threading.Event()
    messages = [turn(i, first_turns, "What does it return for 2 and 3?") for i in range(CONVERSATIONS)]

    def run(i: int) -> dict:
        outcome = {"started": False, "replica": None, "text": "", "error": None}
        try:
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages[i], temperature=0,
                                                                   max_tokens=MAX_TOKENS, stream=True)
            outcome["replica"] = raw.headers["x-replica-id"]
            for chunk in raw.parse():
                outcome["started"] = True
                if outcome["replica"] == victim:
                    victim_started.set()
                outcome["text"] += chunk.choices[0].delta.content or "" if chunk.choices else ""
        except openai.APIError as e:
            outcome["error"] = e
        return outcome

    with ThreadPoolExecutor(CONVERSATIONS) as pool:
        futures = [pool.submit(run, i) for i in range(CONVERSATIONS)]
        assert victim_started.wait(300), "no answer started on the replica to kill"
        ray.kill(ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#ModelReplica#{victim}", namespace="serve"),
                 no_restart=False)
        outcomes = [f.result(timeout=600) for f in futures]  # nothing hangs

    for i, o in enumerate(outcomes):
        if o["error"] is None:
            assert o["text"] == reference(messages[i]), f"request {i}"
        else:  # only an answer already under way on the killed replica may fail, and only with the 503 body
            assert o["started"] and o["replica"] == victim, f"request {i}: {o['error']!r}"
            assert o["error"].code == "replica_unavailable" and o["error"].type == "server_overloaded"
    moved = [i for i, o in enumerate(outcomes) if first_turns[i][1] == victim and o["replica"] != victim]
    assert moved and all(outcomes[i]["error"] is None for i in moved)

    deadline = time.monotonic() + 300
    while replica_states() != {"RUNNING": 2} and time.monotonic() < deadline:
        time.sleep(1)
    assert replica_states() == {"RUNNING": 2}, "Ray did not restart the killed replica"
    answer, replica = ask(client, messages[0], stream=False)
    assert answer == reference(messages[0]) and replica != victim


def test_a_conversation_keeps_its_key_across_turns() -> None:
    from deploy.conversation import conversation_key

    def key(body: dict, path: str = "/v1/chat/completions") -> str | None:
        return conversation_key(path, json.dumps(body).encode())

    first = {"messages": opening(1)}
    later = {"messages": [*opening(1), {"role": "assistant", "content": "def f(a, b): ..."},
                          {"role": "user", "content": TURN2}], "stream": True}
    assert key(first) == key(later) != key({"messages": opening(2)})
    assert key({"messages": opening(1), "user": "ann"}) == key({"messages": opening(2), "user": "ann"}) == "user:ann"
    assert key(first, "/v1/models") is None and key({"messages": [{"role": "system", "content": "x"}]}) is None
    assert conversation_key("/v1/chat/completions", b"{not json") is None


def test_only_deploy_imports_ray() -> None:
    """api.py and everything it loads stay free of Ray: only deploy/ (and the tests) import it."""
    from test_layout import ROOT, project_files

    offenders = []
    for module, path in project_files().items():
        if module.split(".")[0] == "deploy":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "ray" or n.startswith("ray.") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders
