"""The emulated atc computes what the chosen precision mode computes on a chip: float16 rounding where an
op runs in float16 (emulator/emu_precision.py), so an overflow a board would hit shows up here, and the
mixlist (export/ops_info.json) keeps RMSNorm's sum of squares in float32."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from safetensors.torch import load_file, save_file

from emulator import emu_om, emu_precision, harness
from export.onnx2om import MIXLIST

pytestmark = pytest.mark.emulator

KV = 32
PREFILL = 4
# Logits of the tiny model are O(1); float16 weights plus float16 activations move them by ~1e-3.
TOLERANCE = 2e-2


def atc(onnx_path: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """The emulated atc with the flags onnx2om.py emits for prefill 4 and cache KV (profiles kv/2 and kv)."""
    width = 2 * 2 * 2  # tiny model: 2 layers * (k, v) * 2 kv heads
    dims = ";".join(f"{s},{s + kv},{s},{kv}" for kv in (KV // 2, KV) for s in (1, 2, 4))
    args = [str(harness.EMULATOR / "atc"), "--framework=5", f"--model={onnx_path}", f"--output={out}",
            "--soc_version=Ascend310B1", "--input_format=ND",
            f"--input_shape=input_ids:1,-1;attention_mask:1,-1;position_ids:1,-1;past_key_values:1,-1,{width},16",
            f"--dynamic_dims={dims}", "--log=error", *flags]
    r = subprocess.run(args, capture_output=True, text=True, env=harness.subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def om_graph(om: Path, folder: Path) -> tuple[dict, Path]:
    """The header of an emulated .om and the ONNX graph inside it, written out under `folder`."""
    data = memoryview(om.read_bytes())
    header, start = emu_om.read_header(data)
    folder.mkdir(parents=True, exist_ok=True)
    return header, emu_om.extract_blobs(data, header, start, folder)


def feeds(dtype, seed: int = 0) -> dict[str, np.ndarray]:
    """A prefill of PREFILL tokens after KV/2 cached ones, at the kv/2 profile's static shapes."""
    rng = np.random.default_rng(seed)
    past = KV // 2
    return {"input_ids": rng.integers(3, 400, (1, PREFILL)),
            "attention_mask": np.ones((1, past + PREFILL), np.int64),
            "position_ids": np.arange(past, past + PREFILL)[None],
            "past_key_values": (0.5 * rng.standard_normal((1, past, 8, 16))).astype(dtype)}


def logits(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = np.float16 if session.get_inputs()[3].type == "tensor(float16)" else np.float32
    return session.run(["logits"], {**inputs, "past_key_values": inputs["past_key_values"].astype(dtype)})[0] \
        .astype(np.float32)


@pytest.fixture(scope="module")
def tiny(make_tiny, tiny_onnx_of):
    model_dir = make_tiny()
    return {"fp32": tiny_onnx_of(model_dir, KV), "fp16": tiny_onnx_of(model_dir, KV, "float16")}


def test_mixed_float16_compile_stays_finite_and_close_to_float32(tiny, tmp_path):
    """onnx2om.py's flags (mixed_float16 + ops_info.json) on the float16 export: the compiled graph's
    logits are finite and within TOLERANCE of the float32 export's, yet not float32's (rounding happened)."""
    atc(tiny["fp16"], tmp_path / "m", "--precision_mode_v2=mixed_float16", f"--modify_mixlist={MIXLIST}")
    header, graph = om_graph(tmp_path / "m.om", tmp_path / "x")
    assert header["precision"]["mode"] == "mixed_float16" and header["precision"]["numerics_emulated"]
    assert header["inputs"][3]["dtype"] == "float16" and header["profiles"][0] == [1, KV // 2 + 1, 1, KV // 2]
    inputs = feeds(np.float32)
    ref, got = logits(tiny["fp32"], inputs), logits(graph, inputs)
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.isfinite(got).all()
    assert 0 < np.abs(got - ref).max() < TOLERANCE * scale
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def rms_norm_ops(graph: Path) -> dict[str, list[bool]]:
    """For each Pow and ReduceMean node: whether its output is rounded to float16 (lowered)."""
    nodes = onnx.load(str(graph), load_external_data=False).graph.node
    return {op: [n.output[0].endswith("__raw") for n in nodes if n.op_type == op] for op in ("Pow", "ReduceMean")}


def test_the_mixlist_keeps_rms_norm_in_float32_inside_the_om(tiny, tmp_path):
    """With ops_info.json every Pow and ReduceMean of the compiled graph computes in float32; without it,
    mixed_float16 lowers them, as the gray-list rule (follow the op before) does after float16 ops."""
    atc(tiny["fp16"], tmp_path / "with", "--precision_mode_v2=mixed_float16", f"--modify_mixlist={MIXLIST}")
    atc(tiny["fp16"], tmp_path / "without", "--precision_mode_v2=mixed_float16")
    with_header, with_graph = om_graph(tmp_path / "with.om", tmp_path / "a")
    without_header, without_graph = om_graph(tmp_path / "without.om", tmp_path / "b")
    norms = 2 * 2 + 1  # two per layer and the final one
    assert rms_norm_ops(with_graph) == {"Pow": [False] * norms, "ReduceMean": [False] * norms}
    assert rms_norm_ops(without_graph) == {"Pow": [True] * norms, "ReduceMean": [True] * norms}
    assert with_header["precision"]["float32_ops"]["Pow"] == norms
    assert "Pow" not in without_header["precision"]["float32_ops"]


@pytest.fixture(scope="module")
def loud_tiny(make_tiny, tiny_onnx_of, tmp_path_factory):
    """The tiny model with its embeddings (|w| <= 0.09) scaled by 10000: the residual stream then holds
    values of several hundred, whose squares overflow float16 (256**2 > 65504), as large outlier
    activations of real models do. RMSNorm is scale-free, so the float32 model still gives ordinary logits."""
    src = make_tiny()
    model_dir = tmp_path_factory.mktemp("loud") / "tiny-loud"
    shutil.copytree(src, model_dir)
    weights = next(model_dir.glob("*.safetensors"))
    state = load_file(str(weights))
    state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"] * 10000
    save_file(state, str(weights), metadata={"format": "pt"})
    return {"fp32": tiny_onnx_of(model_dir, KV), "fp16": tiny_onnx_of(model_dir, KV, "float16")}


def test_a_large_sum_of_squares_overflows_without_the_mixlist_only(loud_tiny, tmp_path):
    inputs = feeds(np.float32, seed=1)
    ref = logits(loud_tiny["fp32"], inputs)
    scale = max(1.0, float(np.abs(ref).max()))
    out = {}
    for name, flags in (("with", [f"--modify_mixlist={MIXLIST}"]), ("without", [])):
        atc(loud_tiny["fp16"], tmp_path / name, "--precision_mode_v2=mixed_float16", *flags)
        out[name] = logits(om_graph(tmp_path / f"{name}.om", tmp_path / name)[1], inputs)
    assert np.abs(out["with"] - ref).max() < TOLERANCE * scale
    broken = ~np.isfinite(out["without"]) | (np.abs(out["without"] - ref) > 0.25 * scale)
    assert broken.any(), np.abs(out["without"] - ref).max()


def test_origin_keeps_a_float32_graph_bit_for_bit(tiny, tmp_path):
    """--precision_mode_v2=origin (and --precision_mode=must_keep_origin_dtype) run the graph's own
    dtype: for the float32 export the .om holds the exported graph itself."""
    for name, flag in (("v2", "--precision_mode_v2=origin"), ("v1", "--precision_mode=must_keep_origin_dtype")):
        atc(tiny["fp32"], tmp_path / name, flag)
        header, graph = om_graph(tmp_path / f"{name}.om", tmp_path / name)
        assert header["precision"]["lowered_ops"] == {} and graph.read_bytes() == tiny["fp32"].read_bytes()


def run_model(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def one_op_graph(dtype: int) -> onnx.ModelProto:
    """y = (x * x) / x in `dtype`."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Div", ["sq", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, [2])],
                              [helper.make_tensor_value_info("y", dtype, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_float16_graph_overflows_as_a_chip_would_and_onnxruntime_alone_does_not():
    """Why the emulator rounds explicitly: onnxruntime runs these float16 ops through float32 kernels
    and returns 300 for (300 * 300) / 300; a chip computing in float16 gets inf (90000 > 65504)."""
    x = np.array([300, 2], np.float16)
    model = one_op_graph(TensorProto.FLOAT16)
    plain = run_model(model, {"x": x})
    chip = run_model(emu_precision.convert(model, "origin")[0], {"x": x})
    assert plain.tolist() == [300, 2]
    assert np.isinf(chip[0]) and chip[1] == 2 and chip.dtype == np.float16


def matmul_scale_graph() -> onnx.ModelProto:
    """z = (x @ w) * c in float32: x=1000, w=100 make a product of 1e5, above float16's 65504."""
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [1, 1], [100.0]),
             helper.make_tensor("c", TensorProto.FLOAT, [], [1e-3])]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Mul", ["y", "c"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("mode, mixlist, overflows", [
    ("origin", None, False),                    # float32 stays float32
    ("fp16", None, True),                       # every op in float16: the 1e5 product overflows
    ("cube_fp16in_fp32out", None, False),       # MatMul takes float16 in, gives float32 out
    ("allow_fp32_to_fp16", None, True),         # matrix ops in float16
    ("mixed_float16", None, True),              # MatMul is on the (assumed) white list
    ("mixed_float16", {"black-list": {"to-add": ["MatMulV2"]}}, False),  # black-listed: stays float32
    ("mixed_bfloat16", None, False),            # bfloat16 has float32's range
])
def test_each_precision_mode_rounds_where_its_documented_rule_says(mode, mixlist, overflows):
    converted, _ = emu_precision.convert(matmul_scale_graph(), mode, mixlist)
    z = run_model(converted, {"x": np.array([[1000]], np.float32)})[0, 0]
    assert np.isinf(z) == overflows
    if not overflows:
        assert abs(z - 100) < (1.0 if mode == "mixed_bfloat16" else 1e-3)


def test_emulated_om_keeps_the_header_keys_the_acl_emulator_reads(tiny, tmp_path):
    """The rewritten graph keeps the exported inputs and outputs, so the .om's inputs/outputs/profiles
    are those of the graph onnx2om.py compiled."""
    atc(tiny["fp16"], tmp_path / "m", "--precision_mode_v2=mixed_float16", f"--modify_mixlist={MIXLIST}")
    header, graph = om_graph(tmp_path / "m.om", tmp_path / "x")
    source = onnx.load(str(tiny["fp16"]), load_external_data=False).graph
    compiled = onnx.load(str(graph), load_external_data=False).graph
    def io(values) -> list[tuple[str, int]]:
        return [(v.name, v.type.tensor_type.elem_type) for v in values]

    assert io(source.input) == io(compiled.input) and io(source.output) == io(compiled.output)
    assert [i["name"] for i in header["inputs"]] == [v.name for v in source.input]
    assert [o["dtype"] for o in header["outputs"]] == ["float16", "float16"]
    assert len(header["profiles"]) == len(header["profile_outputs"]) == 6
    assert json.loads(MIXLIST.read_text()) == header["mixlist"]


def test_the_bench_measures_the_graph_the_emulated_atc_puts_in_the_om(tiny, tmp_path):
    """bench/quality.py's atc_mixed format and onnx2om.py's flags give the same rewritten graph."""
    from bench.quality import atc_graph

    atc(tiny["fp16"], tmp_path / "m", "--precision_mode_v2=mixed_float16", f"--modify_mixlist={MIXLIST}")
    _, graph = om_graph(tmp_path / "m.om", tmp_path / "x")
    bench_graph = atc_graph("atc_mixed", tiny["fp16"], root=tmp_path / "bench")
    assert bench_graph.read_bytes() == graph.read_bytes()
    nodes = onnx.load(str(bench_graph)).graph.node
    assert sum(n.name.startswith("emu_round/") for n in nodes) > 0
