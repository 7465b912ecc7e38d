"""change_node.py rewrites what atc rejects and leaves everything else computing the same."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from export.change_node import main as change_main

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
