"""The ONNX graph contract, checked against transformers on tiny random models of many shapes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForCausalLM

from config import InferenceConfig

from core.errors import UserError
from export.export_onnx import main as export_main
from core.contract import read_meta
from session import open_session

SHAPES = {  # name: make_tiny kwargs
    "gqa1_untied": dict(num_heads=4, num_kv_heads=4),
    "gqa2_tied": dict(num_heads=4, num_kv_heads=2, tie_word_embeddings=True),
    "gqa7_untied_v4": dict(hidden_size=112, num_heads=7, num_kv_heads=1, config_style="v4"),
    "qwen3": dict(model_type="qwen3", num_heads=4, num_kv_heads=2, head_dim=32),
}
KV_LEN = 32
PROMPT, DECODE_STEPS = 11, 3


def reference(model_dir, ids: np.ndarray) -> tuple[np.ndarray, object]:
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf(torch.from_numpy(ids), use_cache=True)
    return out.logits[0].numpy(), out.past_key_values


def session_logits(config: InferenceConfig, ids: np.ndarray) -> np.ndarray:
    """Prefill PROMPT tokens in power-of-two chunks, then decode the rest one by one."""
    session = open_session(config)
    rows = [session.run(ids[:, :PROMPT])]
    for i in range(PROMPT, ids.shape[1]):
        rows.append(session.run(ids[:, i:i + 1]))
    assert session.length == ids.shape[1]
    return np.stack(rows)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_graph_matches_transformers(make_tiny, tiny_onnx_of, shape, dtype):
    model_dir = make_tiny(**SHAPES[shape])
    path = tiny_onnx_of(model_dir, KV_LEN, dtype)
    cfg = InferenceConfig.create(hf_model_dir=str(model_dir), onnx_model_path=str(path), kv_cache_length=KV_LEN,
                          max_input_length=16, max_prefill_length=4)
    ids = np.random.default_rng(1).integers(3, cfg.shape.vocab_size, (1, PROMPT + DECODE_STEPS))
    ref, _ = reference(model_dir, ids)
    want = ref[[PROMPT - 1] + list(range(PROMPT, ids.shape[1]))]
    tol = 1e-3 if dtype == "float32" else 3e-2
    for method in ("fixsize", "basic"):
        cfg.session.kv_cache_method = method
        got = session_logits(cfg, ids)
        assert np.abs(got - want).max() < tol * max(1.0, np.abs(want).max()), (method, np.abs(got - want).max())


def test_inputs_outputs_and_metadata(make_tiny, tiny_onnx_of):
    model_dir = make_tiny(num_layers=3, num_heads=4, num_kv_heads=2)
    path = tiny_onnx_of(model_dir, 64, "float16")
    model = onnx.load(str(path))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert list(dims) == ["input_ids", "attention_mask", "position_ids", "past_key_values",
                          "logits", "out_key_values"]
    head_dim = 64 // 4
    assert dims["past_key_values"][2:] == [3 * 2 * 2, head_dim]
    assert dims["out_key_values"][2:] == [3 * 2 * 2, head_dim]
    for name in ("input_ids", "position_ids", "logits", "out_key_values"):
        assert all(isinstance(d, str) for d in dims[name][:2]), name  # batch and seq are dynamic
    assert isinstance(dims["past_key_values"][1], str) and isinstance(dims["attention_mask"][1], str)
    assert types["input_ids"] == types["attention_mask"] == types["position_ids"] == onnx.TensorProto.INT64
    assert types["past_key_values"] == types["out_key_values"] == onnx.TensorProto.FLOAT16
    ops = {n.op_type for n in model.graph.node}
    assert "Trilu" not in ops and not any(n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.INT8
                                          for n in model.graph.node)
    meta = read_meta(path)
    assert meta["kv_cache_length"] == "64" and meta["dtype"] == "float16"
    assert (meta["num_hidden_layers"], meta["num_key_value_heads"], meta["head_dim"]) == ("3", "2", str(head_dim))
    assert meta["model_name"] == model_dir.name


def test_cache_slots_hold_rotated_keys_then_values(make_tiny, tiny_onnx_of):
    """Layer l's keys sit in slots l*2H..l*2H+H-1 (after rotary), its values in the next H slots."""
    model_dir = make_tiny(num_heads=4, num_kv_heads=2)
    path = tiny_onnx_of(model_dir, KV_LEN)
    cfg = InferenceConfig.create(hf_model_dir=str(model_dir), onnx_model_path=str(path), kv_cache_length=KV_LEN,
                          max_input_length=16, max_prefill_length=16)
    ids = np.random.default_rng(2).integers(3, cfg.shape.vocab_size, (1, 9))
    session = open_session(cfg)
    session.run(ids)
    _, cache = reference(model_dir, ids)
    h = cfg.shape.num_key_value_heads
    for layer in range(cfg.shape.num_hidden_layers):
        ours = session.cache.buffer[0, :9, layer * 2 * h:(layer + 1) * 2 * h].transpose(1, 0, 2)
        np.testing.assert_allclose(ours[:h], cache.layers[layer].keys[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(ours[h:], cache.layers[layer].values[0].numpy(), atol=1e-4)


def test_batch_of_two_rows_is_two_single_rows(make_tiny, tiny_onnx_of):
    import onnxruntime as ort
    model_dir = make_tiny()
    path = tiny_onnx_of(model_dir, KV_LEN)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(3).integers(3, 200, (2, 5))
    past = np.zeros((2, 4, 8, 16), np.float32)
    mask = np.concatenate([np.zeros((2, 4), np.int64), np.ones((2, 5), np.int64)], axis=1)
    pos = np.tile(np.arange(5), (2, 1))
    both = sess.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "past_key_values": past})
    for row in range(2):
        one = sess.run(None, {"input_ids": ids[row:row + 1], "attention_mask": mask[row:row + 1],
                              "position_ids": pos[row:row + 1], "past_key_values": past[row:row + 1]})
        np.testing.assert_allclose(both[0][row], one[0][0], atol=1e-5)


def test_session_refuses_a_model_exported_differently(make_tiny, tiny_onnx_of):
    model_dir = make_tiny()
    path = tiny_onnx_of(model_dir, KV_LEN)
    with pytest.raises(UserError, match="kv_cache_length: the model was exported with 32, this run asks for 64"):
        open_session(InferenceConfig.create(hf_model_dir=str(model_dir), onnx_model_path=str(path),
                                           kv_cache_length=64, max_input_length=16))
    other = make_tiny(num_layers=3)
    with pytest.raises(UserError, match="num_hidden_layers"):
        open_session(InferenceConfig.create(hf_model_dir=str(other), onnx_model_path=str(path),
                                           kv_cache_length=KV_LEN, max_input_length=16))


def test_export_rejects_bad_input_with_one_line(tmp_path, capsys, tiny_model_dir):
    assert export_main(["--hf_model_dir", str(tmp_path), "--onnx_model_path", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no config.json" in err[0]
    assert export_main(["--hf_model_dir", str(tiny_model_dir), "--onnx_model_path", str(tmp_path / "x.bin")]) == 2
    assert not (tmp_path / "x.bin").exists()
