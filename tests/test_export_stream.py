"""The streaming exporters: the npu graph written node by node equals the one torch traces from
backends/qwen_torch.py; weights written in small row chunks equal weights written whole; quantizing in the
export pass equals quantize_onnx.py, which equals onnxruntime's own quantizer; sharded bf16 checkpoints;
no torch needed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from script_exit import exit_status
from export import onnx_weights
from export.check_ops import unlisted_ops
from export.export_onnx import main as export_main
from traced_export import export_traced
from export.quantize_onnx import main as quantize_main
from export.safetensors_io import INDEX_NAME, Checkpoint, SafetensorsWriter, f32_to_bf16

SHAPES = {  # name: make_tiny kwargs, as in test_export_contract.py, plus Qwen3 with an explicit head_dim
    "gqa1_untied": dict(num_heads=4, num_kv_heads=4),
    "gqa2_tied": dict(num_heads=4, num_kv_heads=2, tie_word_embeddings=True),
    "gqa7_untied_v4": dict(hidden_size=112, num_heads=7, num_kv_heads=1, config_style="v4"),
    "qwen3": dict(model_type="qwen3", num_heads=4, num_kv_heads=2, head_dim=32),
}
KV_LEN = 16
DTYPES = {"float32": torch.float32, "float16": torch.float16}


@pytest.fixture(scope="module")
def traced_of(tmp_path_factory):
    """`traced_of(model_dir, dtype)` -> the npu graph torch traces from backends/qwen_torch.py."""
    built: dict[tuple[str, str], Path] = {}

    def make(model_dir: Path, dtype: str) -> Path:
        key = (str(model_dir), dtype)
        if key not in built:
            path = tmp_path_factory.mktemp("traced") / f"{Path(model_dir).name}_{dtype}.onnx"
            export_traced(model_dir, path, KV_LEN, DTYPES[dtype])
            built[key] = path
        return built[key]

    return make


def npu_feeds(model_dir: Path, dtype: str, seed: int) -> dict[str, np.ndarray]:
    """Three new tokens after a 5-slot cache of random keys/values whose first slot is padding."""
    cfg = json.loads((model_dir / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    kvh, d = cfg["num_key_value_heads"], cfg.get("head_dim") or cfg["hidden_size"] // heads
    rng = np.random.default_rng(seed)
    past, seq = 5, 3
    return {"input_ids": rng.integers(3, cfg["vocab_size"], (2, seq)),
            "attention_mask": np.array([[0] + [1] * (past + seq - 1), [1] * (past + seq)], np.int64),
            "position_ids": np.tile(np.arange(past, past + seq), (2, 1)) - np.array([[1], [0]]),
            "past_key_values": rng.standard_normal((2, past, cfg["num_hidden_layers"] * 2 * kvh, d)).astype(dtype)}


def run(path: Path, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def signature(model: onnx.ModelProto) -> list:
    return [(v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in list(model.graph.input) + list(model.graph.output)]


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_direct_npu_graph_equals_the_traced_one(make_tiny, tiny_onnx_of, traced_of, shape, dtype):
    model_dir = make_tiny(**SHAPES[shape])
    direct, traced = tiny_onnx_of(model_dir, KV_LEN, dtype), traced_of(model_dir, dtype)
    feeds = npu_feeds(model_dir, dtype, seed=len(shape))
    (logits, cache), (want_logits, want_cache) = run(direct, feeds), run(traced, feeds)
    assert logits.dtype == want_logits.dtype == np.dtype(dtype)
    # Same ops in the same order: float32 agrees to rounding; float16 to a unit in the last place or two.
    tol = 1e-5 if dtype == "float32" else 4e-3
    scale = max(1.0, float(np.abs(want_logits).max()))
    assert np.abs(logits.astype(np.float32) - want_logits).max() < tol * scale
    assert np.abs(cache.astype(np.float32) - want_cache).max() < tol * max(1.0, float(np.abs(want_cache).max()))
    # The padding slot and the causal mask matter: the two batch rows differ only there and in positions.
    assert np.abs(logits[0] - logits[1]).max() > 1e-3

    ours, theirs = onnx.load(str(direct), load_external_data=False), onnx.load(str(traced), load_external_data=False)
    assert signature(ours) == signature(theirs)
    assert ours.opset_import[0].version == theirs.opset_import[0].version == 17
    assert unlisted_ops(ours) == {}
    ops = {n.op_type for n in ours.graph.node}
    assert "Trilu" not in ops and ops <= {n.op_type for n in theirs.graph.node} | {"Split"}
    assert {p.key: p.value for p in ours.metadata_props} == {p.key: p.value for p in theirs.metadata_props}


def data_files(path: Path) -> tuple[bytes, bytes]:
    return path.read_bytes(), path.with_name(path.name + ".data").read_bytes()


@pytest.mark.parametrize("flags", [["--dtype", "float16"], ["--target", "cpu"], ["--target", "cpu", "--bits", "4"],
                                   ["--target", "cpu", "--bits", "8"]])
def test_weights_written_in_small_chunks_equal_weights_written_whole(make_tiny, tmp_path, monkeypatch, flags):
    """Tiny models fit one chunk; large ones are cut into bands (transposed, packed, quantized): a chunk
    of one to three rows must give the very same files."""
    model_dir = make_tiny(**SHAPES["gqa2_tied"])
    whole, pieces = tmp_path / "whole" / "m.onnx", tmp_path / "pieces" / "m.onnx"
    args = ["--hf_model_dir", str(model_dir), "--kv_cache_length", str(KV_LEN), *flags]
    assert export_main([*args, "--onnx_model_path", str(whole)]) == 0
    monkeypatch.setattr(onnx_weights, "CHUNK_BYTES", 3 * 4 * 64)
    assert export_main([*args, "--onnx_model_path", str(pieces)]) == 0
    a, b = data_files(whole), data_files(pieces)
    assert a[1] == b[1] and len(a[1]) > 10_000
    assert a[0] == b[0]


def initializers(path: Path) -> dict[str, tuple[int, tuple, bytes]]:
    model = onnx.load(str(path))
    return {t.name: (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer}


def nodes(path: Path) -> list:
    model = onnx.load(str(path), load_external_data=False)
    return [(n.op_type, n.domain, list(n.input), list(n.output), sorted(
        (a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute)) for n in model.graph.node]


@pytest.mark.parametrize("bits", [4, 8])
def test_quantizing_in_the_export_equals_quantize_onnx(make_tiny, cpu_onnx_of, tmp_path, bits):
    model_dir = make_tiny(**SHAPES["qwen3"])
    float_graph = cpu_onnx_of(model_dir, KV_LEN)
    two_steps, one_pass = tmp_path / "two.onnx", tmp_path / "one.onnx"
    # The one-pass export makes quantize_onnx.py's default recipe (int8 attention, the int4 head).
    assert quantize_main(["--input_model_path", str(float_graph), "--output_model_path", str(two_steps),
                          "--bits", str(bits)]) == 0
    assert export_main(["--hf_model_dir", str(model_dir), "--onnx_model_path", str(one_pass), "--kv_cache_length",
                        str(KV_LEN), "--target", "cpu", "--bits", str(bits)]) == 0
    assert nodes(one_pass) == nodes(two_steps)
    assert initializers(one_pass) == initializers(two_steps)
    meta = {p.key: p.value for p in onnx.load(str(one_pass), load_external_data=False).metadata_props}
    assert meta == {p.key: p.value for p in onnx.load(str(two_steps), load_external_data=False).metadata_props}
    assert meta["quantization"].startswith(f"int{bits} block {128 if bits == 4 else 32} asymmetric")


def reference_quantize(src: Path, bits: int, block: int, embedding: bool, symmetric: bool) -> onnx.ModelProto:
    """onnxruntime's MatMulNBitsQuantizer on the whole float model, as quantize_onnx.py ran it before it
    streamed."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from export.quantize_onnx import _upgrade_for_int4

    model = onnx.load(str(src), load_external_data=False)
    if embedding:
        model = _upgrade_for_int4(model)
    onnx.external_data_helper.load_external_data_for_model(model, str(src.parent))
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=symmetric, accuracy_level=4,
                                     op_types_to_quantize=("MatMul", "Gather") if embedding else ("MatMul",),
                                     quant_axes=(("MatMul", 0), ("Gather", 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        quantizer.process()
    return quantizer.model.model


@pytest.mark.parametrize("graph,bits,symmetric", [("npu", 4, False), ("npu", 8, False), ("cpu", 4, False),
                                                  ("cpu", 8, False), ("cpu", 4, True), ("cpu", 8, True)])
def test_streaming_quantizer_equals_onnxruntimes(make_tiny, tiny_onnx_of, cpu_onnx_of, tmp_path, monkeypatch,
                                                 graph, bits, symmetric):
    model_dir = make_tiny(**SHAPES["gqa1_untied"])
    src = tiny_onnx_of(model_dir, KV_LEN) if graph == "npu" else cpu_onnx_of(model_dir, KV_LEN)
    dst = tmp_path / "q.onnx"
    monkeypatch.setattr(onnx_weights, "CHUNK_BYTES", 5 * 4 * 64)  # several column bands per matrix
    # onnxruntime's quantizer gives every MatMul the same bits: ours is asked to keep the head and the
    # attention at them too.
    flags = (["--symmetric"] if symmetric else []) + ["--lm_head_bits", str(bits), "--int8_nodes", "none"]
    assert quantize_main(["--input_model_path", str(src), "--output_model_path", str(dst), "--bits", str(bits),
                          *flags]) == 0
    want = reference_quantize(src, bits, 128 if bits == 4 else 32, bits == 4, symmetric)
    want_inits = {t.name: (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
                  for t in want.graph.initializer}
    assert initializers(dst) == want_inits
    got_ops = [(op, inputs, outputs) for op, _, inputs, outputs, _ in nodes(dst)]
    assert got_ops == [(n.op_type, list(n.input), list(n.output)) for n in want.graph.node]
    assert {o.domain: o.version for o in onnx.load(str(dst), load_external_data=False).opset_import} == \
        {o.domain: o.version for o in want.opset_import}


def half_shards(model_dir: Path, out: Path, dtype: str) -> Path:
    """The model's weights as bfloat16 ("BF16") or float16 ("F16"), split over two safetensors files with
    an index, like a hub download of a large model; config and tokenizer copied."""
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.safetensors", INDEX_NAME))
    ckpt = Checkpoint(model_dir)
    names = sorted(ckpt.tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, part in halves.items():
        writer = SafetensorsWriter(out / file, [(n, dtype, ckpt.shape(n)) for n in part])
        for n in part:
            writer.write(n, f32_to_bf16(ckpt.read(n)) if dtype == "BF16" else ckpt.read(n).astype(np.float16))
            weight_map[n] = file
        writer.close()
    (out / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_sharded_half_precision_checkpoint_exports_like_the_traced_model(make_tiny, tmp_path, dtype):
    model_dir = half_shards(make_tiny(**SHAPES["qwen3"]), tmp_path / dtype, dtype)
    direct, traced = tmp_path / "direct.onnx", tmp_path / "traced.onnx"
    assert export_main(["--hf_model_dir", str(model_dir), "--onnx_model_path", str(direct),
                        "--kv_cache_length", str(KV_LEN)]) == 0
    export_traced(model_dir, traced, KV_LEN)
    feeds = npu_feeds(model_dir, "float32", seed=9)
    for got, want in zip(run(direct, feeds), run(traced, feeds)):
        assert np.abs(got - want).max() < 1e-5 * max(1.0, float(np.abs(want).max()))
    # The weights really are rounded: the float32 model's logits differ.
    source = tmp_path / "f32.onnx"
    assert export_main(["--hf_model_dir", str(make_tiny(**SHAPES["qwen3"])), "--onnx_model_path", str(source),
                        "--kv_cache_length", str(KV_LEN)]) == 0
    assert np.abs(run(source, feeds)[0] - run(direct, feeds)[0]).max() > (1e-4 if dtype == "BF16" else 1e-6)


def test_export_runs_without_torch(make_tiny, tmp_path):
    """torch is only the reference: an export imports neither it nor transformers."""
    model_dir = make_tiny(**SHAPES["gqa2_tied"])
    script = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
              "from export.export_onnx import main\n"
              f"assert main(['--hf_model_dir', {str(model_dir)!r}, '--onnx_model_path', {str(tmp_path / 'm.onnx')!r},"
              " '--target', 'cpu', '--bits', '4']) == 0\n"
              f"assert main(['--hf_model_dir', {str(model_dir)!r}, '--onnx_model_path', {str(tmp_path / 'n.onnx')!r},"
              " '--dtype', 'float16']) == 0\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "peak memory" in done.stdout and (tmp_path / "n.onnx.data").stat().st_size > 10_000


def test_missing_weight_is_a_one_line_error_and_leaves_no_files(make_tiny, tmp_path, capsys):
    source = make_tiny(**SHAPES["gqa2_tied"])
    capsys.readouterr()
    broken = tmp_path / "broken"
    shutil.copytree(source, broken, ignore=shutil.ignore_patterns("*.safetensors"))
    ckpt = Checkpoint(source)
    kept = [n for n in sorted(ckpt.tensors) if n != "model.layers.1.mlp.up_proj.weight"]
    writer = SafetensorsWriter(broken / "model.safetensors", [(n, "F32", ckpt.shape(n)) for n in kept])
    for n in kept:
        writer.write(n, ckpt.read(n))
    writer.close()
    out = tmp_path / "out" / "m.onnx"
    code = exit_status(export_main, ["--hf_model_dir", str(broken), "--onnx_model_path", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.layers.1.mlp.up_proj.weight" in err[0], err
    assert not out.exists() and not out.with_name("m.onnx.data").exists()


@pytest.mark.parametrize("extra,message", [
    (["--bits", "4"], "--bits 4 needs --target cpu"),
    (["--target", "cpu", "--bits", "4", "--block_size", "48"], "power of two"),
])
def test_bad_quantization_flags_are_one_line_errors(make_tiny, tmp_path, capsys, extra, message):
    out, model_dir = tmp_path / "x.onnx", make_tiny()
    capsys.readouterr()
    code = exit_status(export_main, ["--hf_model_dir", str(model_dir), "--onnx_model_path", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()
