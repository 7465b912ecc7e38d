"""change_node.py rewrites what atc rejects and leaves everything else computing the same."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.change_node import DEFAULT_SIMPLIFIER, SIMPLIFIERS, parse_args
from export.change_node import main as change_main
from core.contract import read_meta
from kvcache import KVCache

X = np.arange(1, 26, dtype=np.float32).reshape(5, 5)


def trilu_graph(upper: int, k: int, with_cast: bool = False) -> onnx.ModelProto:
    nodes = [helper.make_node("Constant", [], ["k"], value=helper.make_tensor("kv", TensorProto.INT64, [], [k])),
             helper.make_node("Trilu", ["x", "k"], ["y"], name="mask_trilu", upper=upper)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 5])]
    if with_cast:
        nodes.append(helper.make_node("Cast", ["x"], ["q"], name="to_int8", to=TensorProto.INT8))
        outputs.append(helper.make_tensor_value_info("q", TensorProto.INT8, [5, 5]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 5])], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def run(path, x=X):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def patch_file(tmp_path, model, name="m"):
    src, dst = tmp_path / f"{name}.onnx", tmp_path / f"{name}_patched.onnx"
    onnx.save(model, str(src))
    before = src.read_bytes()
    code = change_main(["--input_model_path", str(src), "--output_model_path", str(dst)])
    assert src.read_bytes() == before  # the input is never touched
    return code, src, dst


def test_triu_with_k1_becomes_kless_and_computes_the_same(tmp_path, capsys):
    code, src, dst = patch_file(tmp_path, trilu_graph(upper=1, k=1))
    assert code == 0 and "triu(x, 1) -> x - tril(x)" in capsys.readouterr().out
    patched = onnx.load(str(dst))
    assert all(len(n.input) == 1 for n in patched.graph.node if n.op_type == "Trilu")
    np.testing.assert_array_equal(run(src), run(dst))
    np.testing.assert_array_equal(run(dst), np.triu(X, 1))


def test_k0_is_dropped_for_both_directions(tmp_path):
    for upper, ref in ((0, np.tril(X)), (1, np.triu(X))):
        code, src, dst = patch_file(tmp_path, trilu_graph(upper=upper, k=0), name=f"u{upper}")
        assert code == 0
        assert [len(n.input) for n in onnx.load(str(dst)).graph.node if n.op_type == "Trilu"] == [1]
        np.testing.assert_array_equal(run(dst), ref)


def test_unrewritable_k_is_reported_and_exit_is_nonzero(tmp_path, capsys):
    code, _, dst = patch_file(tmp_path, trilu_graph(upper=1, k=2))
    assert code == 1 and "KEPT" in capsys.readouterr().out and dst.exists()


def test_int8_cast_becomes_ascend_quant(tmp_path):
    code, _, dst = patch_file(tmp_path, trilu_graph(upper=1, k=1, with_cast=True))
    nodes = onnx.load(str(dst)).graph.node
    quant = [n for n in nodes if n.op_type == "AscendQuant"]
    assert code == 0 and len(quant) == 1 and not any(n.op_type == "Cast" for n in nodes)
    attrs = {a.name: a.f for a in quant[0].attribute}
    assert attrs == {"scale": 1.0, "offset": 0.0}


def test_ops_unknown_to_cann_are_listed(tmp_path, capsys):
    graph = helper.make_graph([helper.make_node("Celu", ["x"], ["c"]), helper.make_node("Hardmax", ["c"], ["y"]),
                               helper.make_node("Gelu", ["y"], ["z"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 5])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [5, 5])])
    code, _, _ = patch_file(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)],
                                                        ir_version=10))
    out = capsys.readouterr().out
    assert code == 0 and "Gelu x1" in out and "Celu" not in out.split("op list")[-1]


def test_bad_paths_give_one_line(tmp_path, capsys):
    assert change_main(["--input_model_path", str(tmp_path / "nope.onnx"),
                        "--output_model_path", str(tmp_path / "o.onnx")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    assert change_main(["--input_model_path", str(junk), "--output_model_path", str(tmp_path / "o.onnx")]) == 2
    assert change_main(["--input_model_path", str(junk), "--output_model_path", str(junk)]) == 2
    assert junk.read_text() == "not a model"


def run_prefill_and_decode(path) -> list[np.ndarray]:
    """logits and out_key_values of a 5-token prefill and one decode step, ORT's own rewrites off,
    so the graph computes as written."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    meta = read_meta(path)
    cache = KVCache(int(meta["num_hidden_layers"]), int(meta["num_key_value_heads"]), int(meta["head_dim"]),
                    int(meta["kv_cache_length"]))
    outputs = []
    for ids in ([5, 17, 230, 9, 41], [77]):
        mask, positions, past = cache.step_inputs(len(ids))
        logits, new_kv = sess.run(None, {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": mask,
                                         "position_ids": positions, "past_key_values": past})
        cache.append(new_kv)
        outputs += [logits, new_kv]
    return outputs


@pytest.mark.parametrize("tool", SIMPLIFIERS)
def test_each_simplifier_keeps_the_graph_outputs(tool, make_tiny, tmp_path, capsys):
    """On the traced graph (what other exporters write), which has shape subgraphs to fold; our direct
    export has none left, so there a simplifier finds nothing to remove."""
    from traced_export import export_traced

    src = tmp_path / "traced.onnx"
    export_traced(make_tiny(), src, 32)
    dst = tmp_path / f"{tool}.onnx"
    assert change_main(["--input_model_path", str(src), "--output_model_path", str(dst), "--simplify", tool]) == 0
    assert f"simplified with {tool}" in capsys.readouterr().out
    before, after = onnx.load(str(src)), onnx.load(str(dst))
    assert len(after.graph.node) < len(before.graph.node)
    assert read_meta(dst) | read_meta(src) == read_meta(dst)  # the export metadata the sessions check survives
    for want, got in zip(run_prefill_and_decode(src), run_prefill_and_decode(dst), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tool", SIMPLIFIERS)
def test_a_patched_graph_is_simplified_as_patched(tool, tmp_path):
    """Here the patch changes the graph, so onnxsim reads it from a temporary copy, not from the input."""
    src, dst = tmp_path / "m.onnx", tmp_path / "out" / "m.onnx"
    onnx.save(trilu_graph(upper=1, k=1), str(src))
    assert change_main(["--input_model_path", str(src), "--output_model_path", str(dst), "--simplify", tool]) == 0
    assert all(len(n.input) == 1 for n in onnx.load(str(dst)).graph.node if n.op_type == "Trilu")
    np.testing.assert_array_equal(run(dst), np.triu(X, 1))
    assert sorted(p.name for p in dst.parent.iterdir()) == ["m.onnx"]


def test_simplify_flag_parsing(capsys):
    base = ["--input_model_path", "a.onnx", "--output_model_path", "b.onnx"]
    assert parse_args(base).simplify is None
    assert parse_args(base + ["--simplify"]).simplify == DEFAULT_SIMPLIFIER
    assert parse_args(["--simplify"] + base).simplify == DEFAULT_SIMPLIFIER  # bare, then more flags
    for tool in ("onnxsim", "onnxslim"):
        assert parse_args(base + ["--simplify", tool]).simplify == tool
    with pytest.raises(SystemExit) as e:
        parse_args(base + ["--simplify", "onnxoptimizer"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "onnxoptimizer" in err


def dangling_input_graph() -> onnx.ModelProto:
    """An Add reading a tensor nothing produces: onnxsim refuses the graph."""
    graph = helper.make_graph([helper.make_node("Add", ["x", "ghost"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def impossible_reshape_graph() -> onnx.ModelProto:
    """25 values reshaped to [7]: onnxslim's shape handling fails on it."""
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 5])],
                              initializer=[numpy_helper.from_array(np.array([7], dtype=np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("tool, broken", [("onnxsim", dangling_input_graph), ("onnxslim", impossible_reshape_graph)])
def test_a_simplifier_failing_is_one_line_and_writes_nothing(tool, broken, tmp_path, capsys):
    src, dst = tmp_path / "broken.onnx", tmp_path / "out" / "broken.onnx"
    onnx.save(broken(), str(src))
    assert change_main(["--input_model_path", str(src), "--output_model_path", str(dst), "--simplify", tool]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--simplify {tool} failed" in err
    assert not dst.exists() and [p.name for p in dst.parent.iterdir()] == []  # no temporary files left either


def test_a_missing_simplifier_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # `import onnxsim` then fails as if it were not installed
    src, dst = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(trilu_graph(upper=1, k=0), str(src))
    code = change_main(["--input_model_path", str(src), "--output_model_path", str(dst), "--simplify", "onnxsim"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "onnxsim is not installed" in err and not dst.exists()
