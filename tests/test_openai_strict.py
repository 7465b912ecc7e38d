"""OpenAI-compatible means what OpenAI does: malformed bodies are 400 (the SDK raises BadRequestError), every
top-level field is honoured, a documented no-op or refused by name, the sampling knobs every local server
takes are honoured (top_k, min_p, repetition_penalty, ignore_eos, min_tokens, stop_token_ids, GBNF grammar),
parallel_tool_calls: false allows one call, browsers on loopback origins get CORS grants, template markup never
reaches the answer, and a seed repeats an answer on the same server state."""
from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest

from api_helpers import fake_server_args, serve, tiny_server_args, user, validate
from config import InferenceConfig
from inference import Inference, SamplingParams
from server import fields

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "expression": {"type": "string"}}}}} for n in ("get_weather", "calculate")]


@pytest.fixture(scope="module")
def scripted(tiny_model_dir, tmp_path_factory):
    with serve(fake_server_args(tiny_model_dir, "--allowed_origins", "https://chat.example.com"),
               tmp_path_factory.mktemp("strict")) as s:
        yield s


@pytest.fixture(scope="module")
def sdk(scripted) -> openai.OpenAI:
    return openai.OpenAI(base_url=scripted.base_url, api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, cpu_onnx_of, tmp_path_factory):
    args = [a for a in tiny_server_args(tiny_model_dir, cpu_onnx_of(tiny_model_dir, 512))
            if a not in ("--kv_cache_method", "basic")]
    with serve(args + ["--max_batch", "4"], tmp_path_factory.mktemp("strict-tiny")) as s:
        yield s


def tiny_chat(server, **body) -> dict:
    body = {"messages": user("Write about the sea and the sky."), "max_tokens": 24, **body}
    r = httpx.post(server.base_url + "/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return validate(r.json(), "CreateChatCompletionResponse")


@pytest.mark.parametrize("body", [
    {"messages": "hi"}, {"messages": [{}]}, {"messages": [{"role": 123}]},
    {"messages": [{"role": "user", "content": 123}]}, {"messages": user("hi"), "max_tokens": 0},
    {"messages": user("hi"), "temperature": 3}, {"messages": user("hi"), "response_format": {"type": "sound"}},
    {"messages": user("hi"), "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
])
def test_malformed_bodies_raise_bad_request_in_the_sdk(sdk, scripted, body):
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="fake-model", **{k: v for k, v in body.items()})
    r = httpx.post(scripted.base_url + "/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and validate(r.json(), "ErrorResponse")["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("field,value", [("mirostat", 2), ("n_predict", 16), ("definitely_not_a_field", 1),
                                         ("json_schema", {"type": "object"})])
def test_fields_not_honoured_are_refused_by_name(sdk, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model="fake-model", messages=user("hi"), extra_body={field: value})
    assert e.value.body["param"] == field and field in e.value.body["message"]


def test_llama_cpp_schema_inside_json_object_is_refused(scripted):
    body = {"messages": user("hi"), "response_format": {"type": "json_object", "schema": {"type": "object"}}}
    r = httpx.post(scripted.base_url + "/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("response_format")


def test_documented_no_ops_are_accepted(sdk):
    r = sdk.chat.completions.create(model="fake-model", messages=user("count"), user="u1", metadata={"a": "b"},
                                    store=False, service_tier="auto", extra_body={"prompt_cache_key": "k"})
    assert r.choices[0].message.content.startswith("one two")


def test_the_field_table_in_the_docs_is_the_one_the_code_declares():
    assert (ROOT / "docs" / "api-fields.md").read_text() == fields.document()
    table = fields.fields_table("/v1/chat/completions")
    for name in ("top_k", "min_p", "repetition_penalty", "parallel_tool_calls", "grammar"):
        assert f"| `{name}` | honoured |" in table
    assert "| `mirostat` | refused (400) |" in table and "| `user` | accepted, changes nothing |" in table


def test_top_k_1_and_min_p_1_give_the_greedy_answer_at_any_temperature(tiny):
    greedy = tiny_chat(tiny, temperature=0)["choices"][0]["message"]["content"]
    for knob in ({"top_k": 1}, {"min_p": 1.0}):
        for seed in (1, 2, 3):
            got = tiny_chat(tiny, temperature=1.5, seed=seed, **knob)["choices"][0]["message"]["content"]
            assert got == greedy, knob
    sampled = {tiny_chat(tiny, temperature=1.5, seed=s)["choices"][0]["message"]["content"] for s in (1, 2, 3)}
    assert sampled != {greedy}  # without the cut, temperature 1.5 does sample


def test_repetition_penalty_is_honoured(tiny):
    plain = tiny_chat(tiny, temperature=0, max_tokens=40)["choices"][0]["message"]["content"]
    penalized = tiny_chat(tiny, temperature=0, max_tokens=40, repetition_penalty=3.0)
    assert penalized["choices"][0]["message"]["content"] != plain
    assert tiny_chat(tiny, temperature=0, max_tokens=40, repetition_penalty=1.0)["choices"][0]["message"]["content"] == plain


def test_min_tokens_ignore_eos_and_stop_token_ids(sdk, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    short = sdk.chat.completions.create(model="fake-model", messages=user("count"), max_tokens=60)
    n = short.usage.completion_tokens
    assert short.choices[0].finish_reason == "stop"
    longer = sdk.chat.completions.create(model="fake-model", messages=user("count"), max_tokens=60,
                                         extra_body={"ignore_eos": True})
    assert longer.choices[0].finish_reason == "length" and longer.usage.completion_tokens == 60
    held = sdk.chat.completions.create(model="fake-model", messages=user("count"), max_tokens=60,
                                       extra_body={"min_tokens": n + 5})
    assert held.usage.completion_tokens >= n + 5
    reply = tok.encode(short.choices[0].message.content, add_special_tokens=False)
    at = next(i for i, t in enumerate(reply) if i > 2 and t not in reply[:i])  # a token not seen before it
    cut = sdk.chat.completions.create(model="fake-model", messages=user("count"), max_tokens=60,
                                      extra_body={"stop_token_ids": [reply[at]]})
    assert cut.choices[0].message.content == tok.decode(reply[:at]) and cut.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="fake-model", messages=user("count"), max_tokens=4,
                                    extra_body={"min_tokens": 5})


def test_parallel_tool_calls_false_allows_exactly_one_call(sdk):
    both = sdk.chat.completions.create(model="fake-model", messages=user("weather two"), tools=TOOLS,
                                       tool_choice="required")
    assert len(both.choices[0].message.tool_calls) == 2
    one = sdk.chat.completions.create(model="fake-model", messages=user("weather two"), tools=TOOLS,
                                      tool_choice="required", parallel_tool_calls=False)
    assert [c.function.name for c in one.choices[0].message.tool_calls] == ["get_weather"]
    streamed = sdk.chat.completions.create(model="fake-model", messages=user("weather two"), tools=TOOLS,
                                           tool_choice="required", parallel_tool_calls=False, stream=True)
    indices = {c.index for chunk in streamed for c in (chunk.choices[0].delta.tool_calls or [])}
    assert indices == {0}


def test_gbnf_grammar_is_honoured_and_a_bad_one_refused(tiny, scripted):
    got = tiny_chat(tiny, temperature=1.0, seed=4, grammar='root ::= ("yes" | "no") "." ')
    assert got["choices"][0]["message"]["content"] in ("yes.", "no.")
    r = httpx.post(scripted.base_url + "/chat/completions", timeout=30,
                   json={"messages": user("hi"), "grammar": "root ::= ( "})
    assert r.status_code == 400 and r.json()["error"]["param"] == "grammar"
    r = httpx.post(tiny.base_url + "/completions", timeout=60,
                   json={"prompt": "Answer:", "grammar": 'root ::= [0-9]{3}', "max_tokens": 8, "temperature": 1})
    assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 3
    assert r.json()["choices"][0]["text"].isdigit()


def test_cors_grants_loopback_and_named_origins_only(scripted):
    url = scripted.base_url + "/chat/completions"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    for origin in ("http://localhost:3000", "http://127.0.0.1:5173", "http://[::1]:8080", "https://chat.example.com"):
        r = httpx.options(url, headers={"Origin": origin, **preflight}, timeout=10)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin, origin
        r = httpx.post(url, json={"messages": user("count")}, headers={"Origin": origin}, timeout=30)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    for origin in ("http://evil.example", "http://localhost.evil.example", "https://chat.example.com.evil.example"):
        r = httpx.options(url, headers={"Origin": origin, **preflight}, timeout=10)
        assert "access-control-allow-origin" not in r.headers, origin
        r = httpx.post(url, json={"messages": user("count")}, headers={"Origin": origin}, timeout=30)
        assert "access-control-allow-origin" not in r.headers, origin


def test_template_markup_never_reaches_the_answer(sdk):
    plain = sdk.chat.completions.create(model="fake-model", messages=user("markup"))
    assert plain.choices[0].message.content.strip() == "Done."
    streamed = sdk.chat.completions.create(model="fake-model", messages=user("markup"), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).strip() == "Done."


def test_a_seed_repeats_an_answer_on_the_same_server_state(tiny):
    """What a seed guarantees (docs/serving.md): the same request, sent when the server holds the same cache
    for its prompt, gets the same answer. A cold prompt and a cached one may differ at temperature > 0: they
    are computed in different chunks, and the last bits of the logits differ."""
    body = dict(temperature=1.0, seed=1234, max_tokens=32, messages=user("A seeded question about the sky."))
    tiny_chat(tiny, **body)  # the prompt is cached from here on
    answers = {tiny_chat(tiny, **body)["choices"][0]["message"]["content"] for _ in range(3)}
    assert len(answers) == 1
    assert tiny_chat(tiny, **{**body, "seed": 4321})["choices"][0]["message"]["content"] not in answers


def test_the_models_recommended_sampling_is_the_default_an_explicit_flag_overrides(tiny_model_dir, tmp_path,
                                                                                   cpu_onnx_of):
    model = tmp_path / "recommending"
    shutil.copytree(tiny_model_dir, model)
    gen = json.loads((model / "generation_config.json").read_text())
    gen.update(top_k=20, top_p=0.9, temperature=0.6, repetition_penalty=1.05)
    (model / "generation_config.json").write_text(json.dumps(gen))
    onnx = cpu_onnx_of(tiny_model_dir, 512)
    recommended = InferenceConfig.create(model, session_type="onnx", onnx_model_path=str(onnx)).generation
    assert (recommended.top_k, recommended.sampling_value, recommended.temperature,
            recommended.repetition_penalty, recommended.sampling_method) == (20, 0.9, 0.6, 1.05, "top_p")
    explicit = InferenceConfig.create(model, session_type="onnx", onnx_model_path=str(onnx), temperature=1.0,
                                      top_k=0, sampling_method="greedy").generation
    assert (explicit.temperature, explicit.top_k, explicit.repetition_penalty, explicit.sampling_method) == \
        (1.0, 0, 1.05, "greedy")
    plain = InferenceConfig.create(tiny_model_dir, session_type="onnx", onnx_model_path=str(onnx)).generation
    assert (plain.top_k, plain.sampling_value, plain.temperature, plain.repetition_penalty) == (0, 0.8, 0.7, 1.0)
    base = SamplingParams.from_config(InferenceConfig.create(model, session_type="onnx", onnx_model_path=str(onnx)))
    assert (base.top_k, base.repetition_penalty, base.value, base.temperature) == (20, 1.05, 0.9, 0.6)


@pytest.mark.parametrize("kind", ["cpu graph", "npu graph", "pytorch"])
def test_the_new_knobs_hold_with_batching_choices_and_constraints_on_every_backend(kind, tiny_model_dir,
                                                                                   cpu_onnx_of, tiny_onnx_of):
    """top_k 1 at a high temperature is greedy whatever else runs: n choices, neighbours in the batch, a grammar."""
    from engine.constraint import Grammars, json_grammar

    onnx = {"cpu graph": cpu_onnx_of(tiny_model_dir, 256), "npu graph": tiny_onnx_of(tiny_model_dir, 256)}.get(kind)
    engine = Inference(InferenceConfig.create(
        tiny_model_dir, session_type="onnx" if onnx else "pytorch", onnx_model_path=str(onnx) if onnx else None,
        kv_cache_length=256, max_batch=4, cpu_thread=1, max_prefill_length=8))
    ids = engine.apply_chat_template(user("Tell me a story."))

    def run(params: SamplingParams, n: int = 1) -> list[list[int]]:
        gens = engine.start_choices(ids, params, n)
        while not all(g.finished for g in gens):
            engine.step()
        return [[d.token_id for d in g.take() if d.token_id is not None] for g in gens]

    greedy = run(SamplingParams(12, method="greedy"))[0]
    assert run(SamplingParams(12, temperature=1.5, top_k=1, seed=3), n=3) == [greedy] * 3
    assert run(SamplingParams(12, temperature=1.5, min_p=1.0, seed=5), n=2) == [greedy] * 2
    grammars = Grammars(engine.tokenizer, engine.eos_token_ids)
    constrained = SamplingParams(40, temperature=1.5, top_k=1, seed=1,
                                 processors=[grammars.constraint(json_grammar({"type": "boolean"}))])
    text = engine.tokenizer.decode(run(constrained)[0])
    assert json.loads(text) in (True, False)
    ignore = run(SamplingParams(30, method="greedy", ignore_eos=True, min_tokens=30))[0]
    assert len(ignore) == 30


def test_the_new_knobs_give_the_same_tokens_with_speculative_decoding(tiny_model_dir, cpu_onnx_of, tmp_path):
    from export.quantize_onnx import main as quantize_main

    onnx = cpu_onnx_of(tiny_model_dir, 256)
    draft = tmp_path / "int4.onnx"
    assert quantize_main(["--input_model_path", str(onnx), "--output_model_path", str(draft), "--bits", "4"]) == 0
    kw = dict(session_type="onnx", onnx_model_path=str(onnx), kv_cache_length=256, cpu_thread=1, max_prefill_length=8)
    plain = Inference(InferenceConfig.create(tiny_model_dir, **kw))
    spec = Inference(InferenceConfig.create(tiny_model_dir, draft_onnx_model_path=str(draft), draft_tokens=3, **kw))
    ids = plain.apply_chat_template(user("Tell me a long story."))
    for params in (lambda: SamplingParams(30, method="greedy", repetition_penalty=1.8),
                   lambda: SamplingParams(30, temperature=1.5, top_k=1, seed=2, min_tokens=30, ignore_eos=True)):
        got = []
        for engine in (plain, spec):
            g = engine.start(ids, params())
            while not g.finished:
                engine.step()
            got.append([d.token_id for d in g.take() if d.token_id is not None])
        assert got[0] == got[1] and len(got[0]) > 5
        assert spec.scheduler.drafter.judged > 0  # the draft did run
