"""Constrained decoding (engine/constraint.py) and the server's response_format / tool_choice: the grammar
walked with random logits, then api.py on the tiny random model (a model that follows no instruction, so
every valid answer is the grammar's doing) and on the real default model."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from api_helpers import serve, tiny_server_args, validate, user
from structured_helpers import SCHEMAS, WEATHER_TOOLS, default_int4_long
from engine.constraint import GrammarError, Grammars, json_grammar, tool_grammar

MODEL = "tiny"
IM_END = "<|im_end|>"


def json_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def call_valid(name: str, arguments: str, tools: list[dict] = WEATHER_TOOLS) -> None:
    params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert name in params
    jsonschema.validate(json.loads(arguments), params[name])


# ---- the constraint alone, on the tiny tokenizer -------------------------------------------------------------
@pytest.fixture(scope="module")
def grammars(tiny_model_dir) -> Grammars:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    return Grammars(tokenizer, [tokenizer.convert_tokens_to_ids(IM_END)])


def walk(grammars: Grammars, grammar: str, seed: int, forced: list[int] = (), steps: int = 400) -> str:
    """Greedy decoding over random logits under the grammar (after `forced` tokens); the text it ends with."""
    rng = np.random.default_rng(seed)
    c = grammars.constraint(grammar)
    out: list[int] = []
    for t in forced:
        c.process(np.zeros(512, np.float32), out)
        c.accept(t)
        out.append(t)
    for _ in range(steps):
        token = int(np.argmax(c.process(rng.standard_normal(512).astype(np.float32), out)))
        c.accept(token)
        out.append(token)
        if token in grammars.eos_token_ids:
            break
    assert out[-1] in grammars.eos_token_ids, "the grammar never let the answer end"
    return grammars.hf_tokenizer.decode(out, skip_special_tokens=False).removesuffix(IM_END)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_logits_under_a_schema_give_valid_json(grammars, name) -> None:
    for seed in range(3):
        jsonschema.validate(json.loads(walk(grammars, json_grammar(SCHEMAS[name]), seed)), SCHEMAS[name])


def test_required_tool_call_under_random_logits_is_a_valid_qwen_call(grammars) -> None:
    from server.toolcall import parse_tool_calls

    for seed in range(5):
        text = walk(grammars, tool_grammar(WEATHER_TOOLS, required=True), seed)
        assert text.startswith("<tool_call>\n")
        found = parse_tool_calls(text, {"get_weather", "add"})
        assert found is not None and found.content is None
        for call in found.calls:
            call_valid(call.name, call.arguments)


def test_auto_leaves_text_free_and_constrains_a_call_once_opened(grammars) -> None:
    from server.toolcall import parse_tool_calls

    grammar = tool_grammar(WEATHER_TOOLS, required=False)
    tok = grammars.hf_tokenizer
    c = grammars.constraint(grammar)
    logits = np.zeros(512, np.float32)
    # free text first: every token of an ordinary sentence is allowed
    for t in tok.encode("Let me look that up.\n", add_special_tokens=False):
        assert np.isfinite(c.process(logits, [])[t])
        c.accept(t)
    forced = tok.encode("Let me look that up.\n<tool_call>", add_special_tokens=False)
    for seed in range(3):
        text = walk(grammars, grammar, seed, forced=forced)
        found = parse_tool_calls(text, {"get_weather", "add"})
        assert found is not None and found.content.startswith("Let me look that up.")  # text may follow a call
        call_valid(found.calls[0].name, found.calls[0].arguments)


def test_auto_with_a_json_format_gives_that_json_or_a_valid_call(grammars) -> None:
    from server.toolcall import parse_tool_calls

    grammar = tool_grammar(WEATHER_TOOLS, required=False, answer_schema=SCHEMAS["nested"])
    tok = grammars.hf_tokenizer
    kinds = set()
    for seed in range(4):
        forced = tok.encode("<tool_call>", add_special_tokens=False) if seed % 2 else []
        text = walk(grammars, grammar, seed, forced=forced)
        found = parse_tool_calls(text, {"get_weather", "add"})
        if text.startswith("<tool_call>"):
            assert found is not None and found.content is None
            call_valid(found.calls[0].name, found.calls[0].arguments)
            kinds.add("call")
        else:
            jsonschema.validate(json.loads(text), SCHEMAS["nested"])
            kinds.add("json")
    assert kinds == {"call", "json"}


def test_a_call_holds_only_the_arguments_its_function_declares(grammars) -> None:
    """Parameters that do not say what other keys may be get none: random logits, free to add keys after
    "city" if the object were open, never do. A schema that allows other keys keeps them allowed."""
    from server.toolcall import parse_tool_calls

    declared = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "weather", "parameters": declared}}]
    for seed in range(6):
        found = parse_tool_calls(walk(grammars, tool_grammar(tools, required=True), seed), {"weather"})
        assert found is not None
        assert all(set(json.loads(call.arguments)) == {"city"} for call in found.calls)
    call = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo", "days": 3}}\n</tool_call>'
    open_ = [{"type": "function", "function": {"name": "weather", "parameters": {
        **declared, "additionalProperties": {"type": "integer"}}}}]
    assert accepts(grammars, tool_grammar(open_, required=True), call)
    assert not accepts(grammars, tool_grammar(tools, required=True), call)


def accepts(grammars: Grammars, grammar: str, text: str) -> bool:
    """Whether the grammar lets every token of text through, one after the other."""
    c, out = grammars.constraint(grammar), []
    for t in grammars.hf_tokenizer.encode(text, add_special_tokens=False):
        if not np.isfinite(c.process(np.zeros(512, np.float32), out)[t]):
            return False
        c.accept(t)
        out.append(t)
    return True


@pytest.mark.parametrize("schema, fragment", [
    ({"type": "frobnicate"}, "frobnicate"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "missing"),
    ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
])
def test_a_schema_the_engine_cannot_compile_names_the_problem(schema, fragment) -> None:
    with pytest.raises(GrammarError, match=fragment):
        json_grammar(schema)
    bad_tool = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    with pytest.raises(GrammarError, match=r"tools\[0\]\.function\.parameters"):
        tool_grammar(bad_tool, required=True)


# ---- api.py on the tiny model -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_model_dir, cpu_onnx_of, tmp_path_factory):
    onnx = cpu_onnx_of(tiny_model_dir, 1024)
    args = [a for a in tiny_server_args(tiny_model_dir, onnx) if a not in ("--kv_cache_method", "basic")]
    with serve(args + ["--max_batch", "2", "--max_prefill_length", "16"], tmp_path_factory.mktemp("structured")) as s:
        yield s


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_tiny_model_json_schema_answers_parse_and_validate(server, name) -> None:
    body = {"model": MODEL, "messages": user(f"Answer in JSON ({name})."), "temperature": 0, "max_tokens": 300,
            "response_format": json_format(name, SCHEMAS[name])}
    r = httpx.post(server.base_url + "/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    choice = validate(r.json(), "CreateChatCompletionResponse")["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMAS[name])


def test_tiny_model_json_object_sampled_and_streamed(client) -> None:
    for seed in (1, 2):
        r = client.chat.completions.create(model=MODEL, messages=user("Some JSON please."), max_tokens=300, seed=seed,
                                           temperature=1.0, response_format={"type": "json_object"})
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    chunks = list(client.chat.completions.create(model=MODEL, messages=user("JSON, streamed."), max_tokens=300,
                                                 temperature=0, stream=True,
                                                 response_format=json_format("e", SCHEMAS["nested"])))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    jsonschema.validate(json.loads(text), SCHEMAS["nested"])


def test_tiny_model_tool_choice_required_always_yields_a_valid_call(server, client) -> None:
    for seed in range(4):
        r = client.chat.completions.create(model=MODEL, messages=user("What is the weather?"), tools=WEATHER_TOOLS,
                                           tool_choice="required", max_tokens=300, seed=seed, temperature=1.0)
        assert r.choices[0].finish_reason == "tool_calls"
        for call in r.choices[0].message.tool_calls:
            call_valid(call.function.name, call.function.arguments)
    body = {"model": MODEL, "messages": user("Add numbers."), "tools": WEATHER_TOOLS, "max_tokens": 300,
            "tool_choice": {"type": "function", "function": {"name": "add"}}, "temperature": 0}
    r = httpx.post(server.base_url + "/chat/completions", json=body, timeout=300)
    message = validate(r.json(), "CreateChatCompletionResponse")["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["add"] * len(message["tool_calls"])
    call_valid("add", message["tool_calls"][0]["function"]["arguments"])


@pytest.mark.parametrize("body, param, fragment", [
    ({"response_format": json_format("bad", {"type": "frobnicate"})}, "response_format", "frobnicate"),
    ({"response_format": json_format("bad", {"type": "string", "pattern": "(?=x)"})}, "response_format",
     "look-around"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "frobnicate"}}}],
      "tool_choice": "required"}, "tools", "tools[0].function.parameters"),
    ({"tool_choice": "required"}, "tool_choice", "tools"),
])
def test_what_cannot_be_constrained_is_a_400_naming_it(server, body, param, fragment) -> None:
    r = httpx.post(server.base_url + "/chat/completions", json={"model": MODEL, "messages": user("hi"), **body},
                   timeout=60)
    assert r.status_code == 400, r.text
    error = validate(r.json(), "ErrorResponse")["error"]
    assert error["param"] == param and fragment in error["message"]


def test_a_constrained_neighbour_leaves_a_free_answer_unchanged(server, client) -> None:
    """The constrained request is sent once the free one streams, and the free answer is long (the tiny
    model makes a token in about a millisecond), so the two run together whatever order the threads
    take and however short the JSON comes out."""
    def free(started: threading.Event | None = None) -> str:
        stream = client.chat.completions.create(model=MODEL, messages=user("Tell me a story."), temperature=0,
                                                max_tokens=900, stream=True)
        parts = []
        for chunk in stream:
            if started is not None:
                started.set()
            parts += [c.delta.content or "" for c in chunk.choices]
        return "".join(parts)

    def constrained():
        return client.chat.completions.create(model=MODEL, messages=user("JSON now."), temperature=0, max_tokens=300,
                                              response_format=json_format("a", SCHEMAS["array_of_objects"]))

    alone = free()
    started = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        b = pool.submit(free, started)
        assert started.wait(60)
        a = pool.submit(constrained)
        together, json_answer = b.result(), a.result()
    assert server.health()["peak_busy_slots"] == 2
    assert together == alone and len(alone) > 900
    jsonschema.validate(json.loads(json_answer.choices[0].message.content), SCHEMAS["array_of_objects"])


def test_n_choices_each_follow_the_schema_and_match_lone_requests_with_their_seeds(client) -> None:
    """Each choice gets its own matcher from the grammar's start (a shared one would feed choice 2's tokens
    to choice 1's state and break both)."""
    fmt = json_format("n", SCHEMAS["nested"])
    r = client.chat.completions.create(model=MODEL, messages=user("JSON choices."), max_tokens=300, n=3, seed=7,
                                       temperature=1.0, response_format=fmt)
    texts = [c.message.content for c in sorted(r.choices, key=lambda c: c.index)]
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMAS["nested"])
    for i, text in enumerate(texts):
        lone = client.chat.completions.create(model=MODEL, messages=user("JSON choices."), max_tokens=300,
                                              seed=7 + i, temperature=1.0, response_format=fmt)
        assert lone.choices[0].message.content == text


# ---- the default model -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_client(default_model_dir, tmp_path_factory):
    onnx = default_int4_long(default_model_dir, tmp_path_factory)
    args = ["api.py", "--hf_model_dir", str(default_model_dir), "--onnx_model_path", str(onnx),
            "--max_prefill_length", "64", "--served_model_name", "qwen"]
    with serve(args, tmp_path_factory.mktemp("structured-real")) as s:
        yield openai.OpenAI(base_url=s.base_url, api_key="unused", max_retries=0)


REAL_SCHEMAS = {
    "person": ("Describe Ada Lovelace.", {"type": "object", "properties": {
        "name": {"type": "string"}, "born": {"type": "integer", "minimum": 1800, "maximum": 1900},
        "fields": {"type": "array", "items": {"type": "string"}, "maxItems": 4}},
        "required": ["name", "born", "fields"], "additionalProperties": False}),
    "sentiment": ("Classify: 'I love this phone, the battery lasts forever.'", {"type": "object", "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["label", "confidence"], "additionalProperties": False}),
    "todo": ("Plan three steps to bake bread.", {"type": "object", "properties": {"steps": {
        "type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "object", "properties": {
            "order": {"type": "integer", "minimum": 1, "maximum": 3}, "text": {"type": "string", "maxLength": 80}},
            "required": ["order", "text"], "additionalProperties": False}}},
        "required": ["steps"], "additionalProperties": False}),
}


@pytest.mark.parametrize("name", sorted(REAL_SCHEMAS))
def test_default_model_json_schema_answers_validate(real_client, name) -> None:
    prompt, schema = REAL_SCHEMAS[name]
    r = real_client.chat.completions.create(model="qwen", messages=user(prompt), temperature=0, max_tokens=400,
                                            response_format=json_format(name, schema))
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_default_model_required_call_is_valid(real_client) -> None:
    r = real_client.chat.completions.create(model="qwen", messages=user("What is 12 plus 30?"), temperature=0,
                                            tools=WEATHER_TOOLS, tool_choice="required", max_tokens=200)
    call = r.choices[0].message.tool_calls[0]
    call_valid(call.function.name, call.function.arguments)
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 12, "b": 30}


# ---- speculative decoding under a constraint ----------------------------------------------------------------
@pytest.mark.parametrize("draft", ["same", "other"])
def test_speculative_decoding_under_a_schema_gives_the_plain_constrained_tokens(tiny_model_dir, make_tiny,
                                                                                  cpu_onnx_of, draft) -> None:
    from config import InferenceConfig
    from inference import Inference, SamplingParams

    target = cpu_onnx_of(tiny_model_dir)
    drafts = {"same": target, "other": cpu_onnx_of(make_tiny(seed=1))}

    def engine(draft_path) -> Inference:
        return Inference(InferenceConfig.create(
            str(tiny_model_dir), onnx_model_path=str(target), max_input_length=100, max_prefill_length=8,
            cpu_thread=1, draft_onnx_model_path=str(draft_path) if draft_path else None))

    def run(inference: Inference, name: str, method: str) -> tuple[list[int], str, object]:
        g = Grammars(inference.tokenizer, inference.eos_token_ids)
        params = SamplingParams(max_new_tokens=56, method=method, temperature=1.0, value=0.9, seed=5,
                                processors=[g.constraint(json_grammar(SCHEMAS[name]))])
        ids = inference.apply_chat_template([{"role": "user", "content": "JSON please."}])
        deltas = list(inference.stream(ids, params))
        return [d.token_id for d in deltas if d.token_id is not None], "".join(d.text for d in deltas), deltas[-1]

    plain, spec = engine(None), engine(drafts[draft])
    for name in ("nested", "int_array", "enum"):
        tokens, text, last = run(spec, name, "greedy")
        assert tokens == run(plain, name, "greedy")[0]
        jsonschema.validate(json.loads(text), SCHEMAS[name])
        assert last.stats.draft_acceptance is not None  # guesses were judged: it did speculate
    for _ in range(2):  # sampled: valid too (the accept/reject rule samples the masked distribution)
        tokens, text, _last = run(spec, "optional", "top_p")
        jsonschema.validate(json.loads(text), SCHEMAS["optional"])
