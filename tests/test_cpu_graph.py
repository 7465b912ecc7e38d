"""The --target cpu graph (export/cpu_graph.py) run by OnnxCpuGraphSession: against transformers, against
the npu graph of the same model (float and quantized), its shape, its CLI errors, and the real model."""
from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import DEFAULT_KV_CACHE_LENGTH, KV_LEN
from script_exit import exit_status
from config import InferenceConfig
from core.errors import UserError
from export.export_onnx import main as export_main
from core.contract import read_meta
from export.quantize_onnx import main as quantize_main
from inference import Inference, SamplingParams
from kvcache import CacheFullError
from backends.base import even_chunks, prefill_chunks
from backends.onnx_cpu_graph import OnnxCpuGraphSession
from backends.onnx_npu_graph import OnnxSession
from session import Session, open_session

SHAPES = {  # name: make_tiny kwargs
    "qwen2": {},
    "qwen2_tied": dict(tie_word_embeddings=True),
    # head_dim 32 with hidden 64 / 4 heads: a head size that cannot be derived from the hidden size.
    "qwen3": dict(model_type="qwen3", head_dim=32),
    # Seven query heads per key/value head, and a transformers-4.x config.json.
    "gqa7_v4": dict(hidden_size=112, num_heads=7, num_kv_heads=1, config_style="v4"),
}
PROMPT, DECODE_STEPS = 13, 5
# float32 on both sides; the graphs measured within 4e-7 of transformers on logits of magnitude ~0.5,
# while a misplaced rotary, norm or cache slot moves them by 1e-2 or more.
ATOL = 1e-4
MS = "com.microsoft"
GREEDY = dict(method="greedy", temperature=0.0)
QUESTION = "Write a python function that checks whether a number is prime."


def config(model_dir: Path, onnx_path: Path, **kw) -> InferenceConfig:
    base = dict(hf_model_dir=str(model_dir), onnx_model_path=str(onnx_path), kv_cache_length=KV_LEN,
                max_input_length=96, max_prefill_length=4, cpu_thread=1)
    return InferenceConfig.create(**{**base, **kw})


def random_ids(model_dir: Path, n: int, seed: int) -> np.ndarray:
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    return np.random.default_rng(seed).integers(3, vocab, (1, n))


def hf_logits(model_dir: Path, ids: np.ndarray) -> np.ndarray:
    """transformers' float32 logits [seq, vocab] at every position of ids [1, seq], in one pass."""
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(torch.from_numpy(ids)).logits[0].numpy()


def teacher_forced(session: Session, ids: np.ndarray, prompt: int = PROMPT) -> np.ndarray:
    """Last-token logits after a chunked prefill of `prompt` tokens, then after each later token alone."""
    start = session.length
    rows = [session.run(ids[:, :prompt])]
    rows += [session.run(ids[:, i:i + 1]) for i in range(prompt, ids.shape[1])]
    assert session.length == start + ids.shape[1]
    return np.stack(rows)


def greedy_tokens(session: Session, prompt: list[int], n: int) -> list[int]:
    tokens, logits = [], session.run(np.array([prompt], np.int64))
    while True:
        tokens.append(int(np.argmax(logits)))
        if len(tokens) == n:
            return tokens
        logits = session.run(np.array([[tokens[-1]]], np.int64))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_logits_match_transformers_over_chunked_prefill_and_decode(make_tiny, cpu_onnx_of, shape):
    model_dir = make_tiny(**SHAPES[shape])
    path = cpu_onnx_of(model_dir)
    ids = random_ids(model_dir, PROMPT + DECODE_STEPS, seed=1)
    want = hf_logits(model_dir, ids)[PROMPT - 1:]
    # 4 splits the prompt 4+4+4+1, so three chunks land on a non-empty cache; 16 reads it in one call (the
    # cpu graph takes chunks of any length, see test_the_cpu_graph_reads_a_prompt_in_full_chunks_and_a_rest).
    for max_prefill in (4, 16):
        session = open_session(config(model_dir, path, max_prefill_length=max_prefill))
        assert type(session) is OnnxCpuGraphSession
        err = np.abs(teacher_forced(session, ids) - want).max()
        assert err < ATOL, (max_prefill, err)


def test_the_cpu_graph_reads_a_prompt_in_full_chunks_and_a_rest(make_tiny, cpu_onnx_of):
    """Power-of-two pieces are the NPU's need: the cpu graph's session reads 13 tokens at a limit of 8 as
    8 + 5, one call less than 8 + 4 + 1, and its answer is the one token-by-token feeding gives."""
    model_dir = make_tiny()
    session = open_session(config(model_dir, cpu_onnx_of(model_dir), max_prefill_length=8))
    ids = random_ids(model_dir, 13, seed=3)
    calls = []
    forward = session._forward_row
    session._forward_row = lambda chunk, n, row: calls.append(chunk.shape[1]) or forward(chunk, n, row)
    chunked = session.run(ids)
    assert calls == [8, 5] and session.length == 13
    session.reset()
    stepped = [session.run(ids[:, i:i + 1]) for i in range(13)][-1]
    assert np.abs(chunked - stepped).max() < ATOL
    assert even_chunks(20, 8) == [8, 8, 4] and even_chunks(16, 8) == [8, 8] and even_chunks(0, 8) == []
    assert prefill_chunks(13, 8) == [8, 4, 1]


def test_cpu_and_npu_graphs_pick_their_sessions_and_generate_the_same(make_tiny, cpu_onnx_of, tiny_onnx_of):
    # qwen3: the tiny qwen2 models greedily repeat a single token, which would hide a drifting cache.
    model_dir = make_tiny(**SHAPES["qwen3"])
    results = {}
    for path, want_class in ((cpu_onnx_of(model_dir), OnnxCpuGraphSession),
                             (tiny_onnx_of(model_dir, KV_LEN), OnnxSession)):
        engine = Inference(config(model_dir, path))
        assert type(engine.session) is want_class
        prompt = engine.apply_chat_template([{"role": "user", "content": "hello there, how are you?"}])
        deltas = list(engine.stream(prompt, SamplingParams(20, **GREEDY)))
        text, last = "".join(d.text for d in deltas), deltas[-1]
        engine.reset()
        tokens = greedy_tokens(engine.session, prompt, 20)
        assert last.finish_reason == "length" and last.stats.completion_tokens == 20
        assert text == engine.tokenizer.decode(tokens, skip_special_tokens=True)
        results[want_class] = (tokens, text)
    assert results[OnnxCpuGraphSession] == results[OnnxSession]
    assert len(set(results[OnnxCpuGraphSession][0])) >= 5  # a varied answer, not one token repeated


@pytest.mark.parametrize("keep", [0, 1, 9])
def test_truncate_then_new_tokens_equals_a_fresh_run(make_tiny, cpu_onnx_of, keep):
    model_dir = make_tiny()
    path = cpu_onnx_of(model_dir)
    first = random_ids(model_dir, 20, seed=2)
    # Other tokens after the kept prefix, 7 prefilled then decoded, ending before the first run's 20.
    new = random_ids(model_dir, 7 + DECODE_STEPS, seed=3)
    reused = open_session(config(model_dir, path))
    teacher_forced(reused, first)
    reused.truncate(keep)
    assert reused.length == keep
    # While the 7 new prompt tokens are prefilled, the slots after them still hold the first run's keys
    # and values (a fresh session has zeros there): attending to them would change the logits.
    stale = reused.cache[..., keep + 7:first.shape[1], :]
    assert stale.size and (np.abs(stale).max(axis=-1) > 0).all()
    fresh = open_session(config(model_dir, path))
    if keep:
        fresh.run(first[:, :keep])
    got, want = teacher_forced(reused, new, 7), teacher_forced(fresh, new, 7)
    np.testing.assert_allclose(got, want, atol=1e-6)
    ids = np.concatenate([first[:, :keep], new], axis=1)
    assert np.abs(got - hf_logits(model_dir, ids)[keep + 6:]).max() < ATOL
    reused.truncate(KV_LEN)  # a longer length is never invented
    assert reused.length == ids.shape[1]


def test_full_cache_raises_and_leaves_the_session_usable(make_tiny, cpu_onnx_of):
    model_dir = make_tiny()
    session = open_session(config(model_dir, cpu_onnx_of(model_dir), max_prefill_length=16))
    ids = random_ids(model_dir, KV_LEN + 1, seed=4)
    session.run(ids[:, :KV_LEN - 2])
    with pytest.raises(CacheFullError):
        session.run(ids[:, KV_LEN - 2:KV_LEN + 1])
    assert session.length == KV_LEN - 2
    # The last two slots, up to the last rotary position the graph has a table row for.
    last = session.run(ids[:, KV_LEN - 2:KV_LEN])
    assert session.length == KV_LEN
    with pytest.raises(CacheFullError):
        session.run(ids[:, KV_LEN:])
    assert session.length == KV_LEN
    want = hf_logits(model_dir, ids[:, :KV_LEN])[-1]
    assert np.abs(last - want).max() < ATOL


def all_node_outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every intermediate tensor of one run, by name: each node output made a graph output."""
    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name)
                                  for name in node.output if name and name not in known)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def test_graph_shape_and_metadata(make_tiny, cpu_onnx_of, tiny_onnx_of):
    layers = 3
    model_dir = make_tiny(num_layers=layers)
    cpu_path, npu_path = cpu_onnx_of(model_dir), tiny_onnx_of(model_dir, KV_LEN)
    cfg = config(model_dir, cpu_path)
    cpu = onnx.load(str(cpu_path), load_external_data=False)
    nodes, weights = cpu.graph.node, {t.name for t in cpu.graph.initializer}
    gqa = [n for n in nodes if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == layers and {n.domain for n in gqa} == {MS}
    # One norm fused with its residual add after each attention and before each later layer and the head.
    assert sum(n.op_type == "SkipSimplifiedLayerNormalization" for n in nodes) == 2 * layers
    # Packed q/k/v and gate/up: four weight matmuls per layer, plus the output projection.
    assert sum(n.op_type == "MatMul" and n.input[1] in weights for n in nodes) == 4 * layers + 1
    assert {o.domain: o.version for o in cpu.opset_import}[""] == 21
    logits_dims = next([d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
                       for o in cpu.graph.output if o.name == "logits")
    assert logits_dims == ["batch", "num_logits", cfg.shape.vocab_size]

    seq = 5
    cache = np.zeros((1, cfg.shape.num_key_value_heads, KV_LEN, cfg.shape.head_dim), np.float32)
    feeds = {"input_ids": random_ids(model_dir, seq, seed=5), "seqlens_k": np.array([seq - 1], np.int32),
             "total_sequence_length": np.array(seq, np.int32), "num_logits": np.array([1])}
    feeds.update({f"past_{kind}_{i}": cache for i in range(layers) for kind in ("key", "value")})
    outputs = all_node_outputs(cpu_path, feeds)
    assert outputs["logits"].shape == (1, 1, cfg.shape.vocab_size)
    full = [name for name, value in outputs.items()
            if value.ndim == 3 and value.shape[1] == seq and value.shape[2] == cfg.shape.vocab_size]
    assert not full, full
    # num_logits asks for more rows: the last ones, as a graph without the cut would give them.
    rows = all_node_outputs(cpu_path, {**feeds, "num_logits": np.array([3])})["logits"]
    assert rows.shape == (1, 3, cfg.shape.vocab_size)
    np.testing.assert_allclose(rows[0, -1], outputs["logits"][0, 0], atol=1e-6)

    npu = onnx.load(str(npu_path), load_external_data=False)
    assert not [n.name for n in npu.graph.node if n.domain not in ("", "ai.onnx")]
    assert read_meta(cpu_path)["target"] == "cpu" and read_meta(npu_path)["target"] == "npu"
    assert read_meta(cpu_path)["dtype"] == "float32"


@pytest.fixture(scope="module")
def quantized(make_tiny, cpu_onnx_of, tiny_onnx_of, tmp_path_factory) -> dict:
    """{"dir": model_dir, (graph, fmt): path} for graph cpu/npu and fmt "fp32" or e.g. "int4-acc1" (4-bit
    weights, MatMulNBits accuracy level 1), all made from one tiny model."""
    model_dir = make_tiny()
    out = tmp_path_factory.mktemp("cpu_quant")
    paths: dict = {"dir": model_dir, ("cpu", "fp32"): cpu_onnx_of(model_dir),
                   ("npu", "fp32"): tiny_onnx_of(model_dir, KV_LEN)}
    for graph in ("cpu", "npu"):
        for bits in (4, 8):
            for level in (1, 4):
                fmt = f"int{bits}-acc{level}"
                dst = out / f"{graph}_{fmt}.onnx"
                assert quantize_main(["--input_model_path", str(paths[graph, "fp32"]), "--output_model_path",
                                      str(dst), "--bits", str(bits), "--accuracy_level", str(level)]) == 0
                paths[graph, fmt] = dst
    return paths


@pytest.mark.parametrize("level", [1, 4])
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_cpu_graph_matches_quantized_npu_graph(quantized, bits, level):
    fmt, model_dir = f"int{bits}-acc{level}", quantized["dir"]
    path = quantized["cpu", fmt]
    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 4 * 2 + 1 and "MatMul" not in ops
    assert ("GatherBlockQuantized" in ops) == (bits == 4)
    meta = read_meta(path)
    block = 128 if bits == 4 else 32  # quantize_onnx.py's defaults
    assert meta["target"] == "cpu" and meta["quantization"].startswith(f"int{bits} block {block} asymmetric")

    ids = random_ids(model_dir, PROMPT + DECODE_STEPS, seed=6)
    logits = {}
    for graph, f in (("cpu", fmt), ("npu", fmt), ("npu", "fp32")):
        session = open_session(config(model_dir, quantized[graph, f]))
        assert type(session) is (OnnxCpuGraphSession if graph == "cpu" else OnnxSession)
        logits[graph, f] = teacher_forced(session, ids)
    gaps = np.abs(logits["cpu", fmt] - logits["npu", fmt]).max(axis=-1)
    quantization_error = np.abs(logits["npu", fmt] - logits["npu", "fp32"]).max()
    # Both sides really run quantized weights (an unquantized pair would agree trivially): measured
    # 3e-3..6e-3 at int8 and ~6e-2 at int4 on logits up to 0.5.
    assert quantization_error > 1e-3, quantization_error
    # Packing q/k/v and gate/up joins weights along the output axis while blocks run along the input
    # axis, so both graphs hold the very same quantized blocks. With float activations (level 1) they
    # differ only in float summation order: measured <= 1.5e-7 over 100 prompts.
    if level == 1:
        assert gaps.max() < 1e-5, gaps
    else:
        # Level 4 (the default) rounds each block of activations to int8, so a 1e-7 difference in a
        # matmul's input now and then moves one value across a rounding step: over 100 prompts of 6
        # rows, 1-2 rows moved, by at most 1.4e-3 (on the machine measured, this prompt at int8 was one
        # of them); every other row stayed within 3e-7. Different weights would move every row, by about
        # the quantization error.
        assert gaps.max() < 3e-3, gaps
        assert np.sum(gaps < 1e-5) >= len(gaps) - 2, gaps
    assert (logits["cpu", fmt].argmax(-1) == logits["npu", fmt].argmax(-1)).all()


def test_a_cpu_graph_from_before_num_logits_is_refused_with_advice(make_tiny, cpu_onnx_of, tmp_path):
    """Earlier cpu graphs always returned one row of logits, with no num_logits input."""
    model_dir = make_tiny()
    old = onnx.load(str(cpu_onnx_of(model_dir)))
    old.graph.input.remove(next(i for i in old.graph.input if i.name == "num_logits"))
    old.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "num_logits"))
    path = tmp_path / "old.onnx"
    onnx.save(old, str(path))
    with pytest.raises(UserError, match="older export.*--target cpu"):
        open_session(config(model_dir, path))


@pytest.mark.parametrize("extra,message", [
    (["--target", "cpu", "--dtype", "float16"], "--target cpu --dtype float16"),
    (["--target", "gpu"], "invalid choice"),
])
def test_bad_target_flags_are_one_line_errors(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "x.onnx"
    code = exit_status(export_main, ["--hf_model_dir", str(tiny_model_dir), "--onnx_model_path", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists() and not out.with_name(out.name + ".data").exists()


def test_default_model_greedy_tokens_equal_transformers(default_model_dir, default_cpu_onnx):
    cfg = InferenceConfig.create(hf_model_dir=str(default_model_dir), onnx_model_path=str(default_cpu_onnx),
                          kv_cache_length=DEFAULT_KV_CACHE_LENGTH, max_input_length=128, max_prefill_length=8)
    engine = Inference(cfg)
    assert type(engine.session) is OnnxCpuGraphSession
    ids = engine.apply_chat_template([{"role": "user", "content": QUESTION}])
    ours = greedy_tokens(engine.session, ids, 24)
    # One copy of the weights at a time: drop onnxruntime's before transformers loads its own.
    del engine
    gc.collect()
    hf = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=24, min_new_tokens=24, do_sample=False)
    del hf
    gc.collect()
    assert ours == ref[0, len(ids):].tolist()
