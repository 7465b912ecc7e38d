"""Weight-only quantization keeps the graph contract and stays close to the float graph."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from script_exit import exit_status
from config import InferenceConfig
from export.export_onnx import main as export_main
from core.contract import read_meta
from export.quantize_onnx import main as quantize_main
from session import open_session

KV_LEN, PROMPT, STEPS = 64, 12, 16


@pytest.fixture(scope="module")
def models(make_tiny, tmp_path_factory) -> dict:
    model_dir = make_tiny()
    out = tmp_path_factory.mktemp("quant")
    paths = {"fp32": out / "fp32.onnx"}
    assert export_main(["--hf_model_dir", str(model_dir), "--onnx_model_path", str(paths["fp32"]),
                        "--kv_cache_length", str(KV_LEN)]) == 0
    for bits in (8, 4):
        paths[f"int{bits}"] = out / f"int{bits}.onnx"
        assert quantize_main(["--input_model_path", str(paths["fp32"]), "--output_model_path",
                              str(paths[f"int{bits}"]), "--bits", str(bits)]) == 0
    return {"dir": model_dir, **paths}


def io_signature(path) -> list:
    m = onnx.load(str(path), load_external_data=False)
    return [(v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in list(m.graph.input) + list(m.graph.output)]


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_contract_and_metadata_kept(models, fmt):
    assert io_signature(models[fmt]) == io_signature(models["fp32"])
    before, after = read_meta(models["fp32"]), read_meta(models[fmt])
    assert {k: v for k, v in after.items() if k != "quantization"} == before
    block = 128 if fmt == "int4" else 32  # quantize_onnx.py's defaults
    assert after["quantization"].startswith(f"{fmt} block {block} asymmetric")
    assert ("lm_head int4 block 32;" if fmt == "int4" else "lm_head int8;") in after["quantization"]
    graph = onnx.load(str(models[fmt]), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    ops = [n.op_type for n in graph.node]
    # Every weight MatMul became MatMulNBits; what is left multiplies activations (attention).
    assert ops.count("MatMulNBits") == 2 * 7 + 1
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert ("GatherBlockQuantized" in ops) == (fmt == "int4")


def greedy(path, model_dir, ids: np.ndarray, method: str) -> tuple[np.ndarray, list[int]]:
    """Teacher-forced last-token logits of the prompt and every given token, and greedy tokens."""
    cfg = InferenceConfig.create(hf_model_dir=str(model_dir), onnx_model_path=str(path), kv_cache_length=KV_LEN,
                          max_input_length=32, max_prefill_length=8, kv_cache_method=method)
    s = open_session(cfg)
    rows = [s.run(ids[:, :PROMPT])] + [s.run(ids[:, i:i + 1]) for i in range(PROMPT, ids.shape[1])]
    s.truncate(PROMPT - 1)
    tokens, logits = [], s.run(ids[:, PROMPT - 1:PROMPT])
    for _ in range(STEPS):
        tokens.append(int(np.argmax(logits)))
        logits = s.run(np.array([[tokens[-1]]], np.int64))
    return np.stack(rows), tokens


@pytest.mark.parametrize("fmt,rel_tol,min_agree", [("int8", 0.03, 1.0), ("int4", 0.2, 0.75)])
@pytest.mark.parametrize("method", ["fixsize", "basic"])
def test_quantized_logits_close_to_float(models, fmt, rel_tol, min_agree, method):
    ids = np.random.default_rng(3).integers(3, 400, (1, PROMPT + STEPS))
    want, want_tokens = greedy(models["fp32"], models["dir"], ids, method)
    got, got_tokens = greedy(models[fmt], models["dir"], ids, method)
    assert np.abs(got - want).max() < rel_tol * np.abs(want).max()
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= min_agree
    # Greedy runs diverge for good after the first differing token, so compare the common prefix.
    agree = next((i for i, (a, b) in enumerate(zip(got_tokens, want_tokens)) if a != b), STEPS)
    assert agree >= min_agree * STEPS, (got_tokens, want_tokens)


@pytest.mark.parametrize("extra,message", [
    (["--block_size", "24"], "power of two"),
    (["--bits", "8", "--embedding", "quantize"], "needs --bits 4"),
    (["--int8_nodes", "down_proj("], "not a regular expression"),
    (["--lm_head_block_size", "48"], "power of two"),
    (["--method", "k_quant", "--symmetric"], "cannot be combined with --symmetric"),
])
def test_bad_flags_are_one_line_errors(models, tmp_path, capsys, extra, message):
    code = exit_status(quantize_main, ["--input_model_path", str(models["fp32"]), "--output_model_path",
                                       str(tmp_path / "q.onnx"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_refuses_missing_and_already_quantized_inputs(models, tmp_path, capsys):
    for src, message in ((tmp_path / "nope.onnx", "no such file"), (models["int4"], "already quantized")):
        code = exit_status(quantize_main, ["--input_model_path", str(src), "--output_model_path",
                                           str(tmp_path / "q.onnx")])
        assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags,head_bits", [([], 4), (["--lm_head_bits", "8"], 8)])
def test_lm_head_at_4_bits_unless_told(models, tmp_path, flags, head_bits):
    out = tmp_path / "int4.onnx"
    assert quantize_main(["--input_model_path", str(models["fp32"]), "--output_model_path", str(out),
                          "--bits", "4", "--int8_nodes", "none", *flags]) == 0
    graph = onnx.load(str(out), load_external_data=False).graph
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node
            if n.op_type == "MatMulNBits"}
    head = next(n.name for n in graph.node if "logits" in n.output)
    assert bits.pop(head) == head_bits and len(bits) == 14 and set(bits.values()) == {4}
    assert f"lm_head int{head_bits}" in read_meta(out)["quantization"]


def test_int8_nodes_keep_8_bits_and_say_so(models, tmp_path):
    """--int8_nodes keeps the MatMuls it matches at 8 bits (a k-quant style mix); the rest stay at 4."""
    out = tmp_path / "mix.onnx"
    assert quantize_main(["--input_model_path", str(models["fp32"]), "--output_model_path", str(out),
                          "--bits", "4", "--int8_nodes", "down_proj"]) == 0
    graph = onnx.load(str(out), load_external_data=False).graph
    head = next(n.name for n in graph.node if "logits" in n.output)
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node
            if n.op_type == "MatMulNBits" and n.name != head}
    down = {name for name in bits if "down_proj" in name}
    assert down and {bits[name] for name in down} == {8}
    assert {b for name, b in bits.items() if name not in down} == {4}
    assert "int8 nodes /down_proj/" in read_meta(out)["quantization"]


def test_int4_keeps_attention_at_8_bits_by_default(models):
    graph = onnx.load(str(models["int4"]), load_external_data=False).graph
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits"}
    attention = {name for name in bits if "self_attn" in name}
    assert attention and {bits[name] for name in attention} == {8}
    assert 4 in {b for name, b in bits.items() if name not in attention}


def test_lm_head_block_size_applies_to_the_head_alone(models, tmp_path):
    out = tmp_path / "head32.onnx"
    assert quantize_main(["--input_model_path", str(models["fp32"]), "--output_model_path", str(out),
                          "--bits", "4", "--lm_head_bits", "4", "--lm_head_block_size", "32"]) == 0
    graph = onnx.load(str(out), load_external_data=False).graph
    head = next(n.name for n in graph.node if "logits" in n.output)
    blocks = {n.name: next(a.i for a in n.attribute if a.name == "block_size") for n in graph.node
              if n.op_type == "MatMulNBits"}
    assert blocks.pop(head) == 32 and set(blocks.values()) == {128}
    assert "lm_head int4 block 32;" in read_meta(out)["quantization"]


def onnxruntime_k_quant(src, dst) -> None:
    """onnxruntime's own k-quant quantizer on the whole float model: every MatMul at int4, block 32 (its
    packing of 4-bit zero points needs an even number of blocks per column)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import KQuantWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    quantizer = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=False, accuracy_level=4,
                                     algo_config=KQuantWeightOnlyQuantConfig())
    with np.errstate(divide="ignore", invalid="ignore"):
        quantizer.process()
    onnx.save_model(quantizer.model.model, str(dst), save_as_external_data=True, location=dst.name + ".data")


def test_k_quant_equals_onnxruntimes_k_quant(models, tmp_path):
    """--method k_quant, streamed a band of columns at a time, computes what onnxruntime's k-quant
    quantizer makes of the whole model (its logits), and rounds differently from the default."""
    ours, theirs, rtn = tmp_path / "kq.onnx", tmp_path / "ort_kq.onnx", tmp_path / "rtn.onnx"
    common = ["--input_model_path", str(models["fp32"]), "--bits", "4", "--block_size", "32", "--embedding", "float",
              "--int8_nodes", "none", "--lm_head_bits", "4"]
    assert quantize_main([*common, "--output_model_path", str(ours), "--method", "k_quant"]) == 0
    assert quantize_main([*common, "--output_model_path", str(rtn)]) == 0
    onnxruntime_k_quant(models["fp32"], theirs)
    ids = np.random.default_rng(5).integers(3, 400, (1, PROMPT + STEPS))
    got, _ = greedy(ours, models["dir"], ids, "basic")
    want, _ = greedy(theirs, models["dir"], ids, "basic")
    plain, _ = greedy(rtn, models["dir"], ids, "basic")
    assert np.allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert np.abs(got - plain).max() > 1e-3 * np.abs(want).max()
    assert "; k_quant" in read_meta(ours)["quantization"]
