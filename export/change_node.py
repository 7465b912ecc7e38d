"""Rewrite the ONNX nodes that atc rejects, and report every change.

    python export/change_node.py --input_model_path output/onnx/m.onnx --output_model_path output/onnx2/m.onnx

- Trilu with a k input: atc accepts only the k-less form. triu(x, 1) becomes x - tril(x); tril(x, 0)
  and triu(x, 0) lose their k. Other k values cannot be rewritten exactly and are reported.
- Cast to INT8 becomes AscendQuant(scale=1, offset=0), the Ascend op that does that cast.
- --simplify [onnxsim|onnxslim] also simplifies the result (constant folding, shape ops removed); a bare
  --simplify uses onnxsim (see DEFAULT_SIMPLIFIER).
- Ops outside CANN's documented ONNX op list are listed (export/check_ops.py).
Our own exporter emits neither op; the rewrites serve graphs from other exporters.
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from core.errors import UserError, run_main
from core.flags import ArgumentParser, add_flags, from_args, option
from export.check_ops import unlisted_ops
from export.export_onnx import save


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def rewrite_trilu(graph: onnx.GraphProto, node: onnx.NodeProto, index: int) -> tuple[list[onnx.NodeProto], str]:
    """Replacement nodes for one Trilu with a k input, and a line describing the change."""
    upper = next((a.i for a in node.attribute if a.name == "upper"), 1)
    k = constant_value(graph, node.input[1])
    if k is None:
        return [node], f"KEPT {node.name or node.output[0]}: Trilu with a computed k cannot be rewritten"
    k = int(k.reshape(-1)[0])
    x, out = node.input[0], node.output[0]
    if k == 0:
        kless = helper.make_node("Trilu", [x], [out], name=f"{node.name}_kless", upper=upper)
        return [kless], f"Trilu {node.name}: dropped k=0 (upper={upper})"
    if upper == 1 and k == 1:
        lower = f"{out}_lower{index}"
        return [helper.make_node("Trilu", [x], [lower], name=f"{node.name}_lower", upper=0),
                helper.make_node("Sub", [x, lower], [out], name=f"{node.name}_sub")], \
            f"Trilu {node.name}: triu(x, 1) -> x - tril(x)"
    return [node], f"KEPT {node.name or out}: Trilu(upper={upper}, k={k}) has no exact k-less form"


def cast_to_quant(node: onnx.NodeProto) -> tuple[onnx.NodeProto, str]:
    quant = helper.make_node("AscendQuant", [node.input[0]], [node.output[0]], name=f"{node.name}_quant",
                             scale=1.0, offset=0.0)
    return quant, f"Cast {node.name}: to INT8 -> AscendQuant(scale=1, offset=0)"


def patch(model: onnx.ModelProto) -> list[str]:
    """Rewrite in place; returns one line per change (lines starting with KEPT were not changed)."""
    graph, nodes, report = model.graph, [], []
    for i, node in enumerate(graph.node):
        if node.op_type == "Trilu" and len(node.input) > 1 and node.input[1]:
            new, line = rewrite_trilu(graph, node, i)
            nodes += new
            report.append(line)
        elif node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.INT8 for a in node.attribute):
            new_node, line = cast_to_quant(node)
            nodes.append(new_node)
            report.append(line)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return report


SIMPLIFIERS = ("onnxsim", "onnxslim")
# onnxsim: on the default model's fp32 graph it peaked at half of onnxslim's memory (5.7 against 11.0 GB),
# for ~10 % more time; greedy tokens equal to the input graph's for both.
DEFAULT_SIMPLIFIER = "onnxsim"


class SimplifyError(Exception):
    """The simplifier rejected the graph or gave up on it."""


def simplify(model: onnx.ModelProto, tool: str, saved_as: Path | None, scratch: Path) -> onnx.ModelProto:
    """`model` simplified by `tool` ("onnxsim" or "onnxslim"). `saved_as` is a file already holding
    `model` with its weights (None: it is written to a temporary directory under `scratch` first)."""
    if tool == "onnxslim":
        import onnxslim
        return onnxslim.slim(model)
    import onnxsim
    # Given a path, onnxsim reads and writes the files itself: a >2 GB graph never becomes one serialized
    # protobuf string. On the fp32 graph that took 23 s and 5.8 GB instead of 58 s and 8.3 GB (one run each).
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".simplify-") as tmp:
        if saved_as is None:
            saved_as = Path(tmp) / "patched.onnx"
            save(model, saved_as)
        out = Path(tmp) / "simplified.onnx"
        _, checked = onnxsim.simplify(str(saved_as), output_path=str(out))
        if not checked:
            raise SimplifyError("onnx's checker rejects onnxsim's result")
        return onnx.load(str(out))


def one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


@dataclass
class ChangeNodeOptions:
    input_model_path: str = option(help="the .onnx written by export_onnx.py")
    output_model_path: str = option(
        help="where to write the patched .onnx (a different path; the input is never modified)")
    simplify: str | None = option(
        None, choices=SIMPLIFIERS, bare=DEFAULT_SIMPLIFIER,
        help=f"also simplify the graph with onnxsim or onnxslim (bare --simplify: {DEFAULT_SIMPLIFIER})")


def parse_args(argv: list[str] | None = None) -> ChangeNodeOptions:
    p = ArgumentParser(description="Make an exported ONNX model acceptable to atc: rewrite Trilu nodes "
                                   "with a k input and INT8 Casts, report what changed.")
    add_flags(p, ChangeNodeOptions)
    return from_args(ChangeNodeOptions, p.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    return run_main("change_node.py", lambda: run(a))


def run(a: ChangeNodeOptions) -> int:
    src, dst = Path(a.input_model_path), Path(a.output_model_path)
    if not src.is_file():
        raise UserError(f"--input_model_path {src}: no such file")
    if dst.resolve() == src.resolve():
        raise UserError("--output_model_path must differ from --input_model_path (the input is kept as it is)")
    try:
        model = onnx.load(str(src))
    except Exception as e:  # protobuf raises several unrelated types for a non-ONNX file
        raise UserError(f"--input_model_path {src}: not a readable ONNX model ({type(e).__name__})") from None
    report = patch(model)
    if a.simplify:
        changed = any(not line.startswith("KEPT") for line in report)
        nodes_before = len(model.graph.node)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            model = simplify(model, a.simplify, src if not changed else None, dst.parent)
        except ImportError as e:
            raise UserError(f"--simplify {a.simplify}: {e.name or a.simplify} is not installed "
                            "(pip install -r requirements.txt)") from None
        except Exception as e:  # the simplifiers raise many unrelated types (RuntimeError from C++, IndexError, ...)
            raise UserError(f"--simplify {a.simplify} failed on this graph, nothing written "
                            f"(try the other simplifier, or none): {one_line(e)}", code=1) from None
        report.append(f"simplified with {a.simplify}: {nodes_before} -> {len(model.graph.node)} nodes")
    save(model, dst)
    for line in report or ["nothing to change: no Trilu with k and no Cast to INT8"]:
        print(line)
    unlisted = unlisted_ops(model)
    if unlisted:
        # Reported, not refused: the list is CANN's documentation for its inference chips, and onnx2om.py
        # refuses such a graph before atc runs anyway.
        print("ops outside CANN's documented ONNX op list (atc may reject them): "
              + ", ".join(f"{op} x{n}" for op, n in unlisted.items()))
    print(f"wrote {dst}")
    kept = [line for line in report if line.startswith("KEPT")]
    return 1 if kept else 0


if __name__ == "__main__":
    sys.exit(main())
