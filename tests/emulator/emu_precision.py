"""What atc's precision modes do to a graph's numbers, emulated for the stand-in `atc`.

A chip running an op in float16 rounds that op's inputs and outputs to float16. onnxruntime cannot
show this with a float16 ONNX graph: on a CPU it runs most float16 ops through float32 kernels and
drops the float16 rounding between them (a float16 Mul(300, 300) followed by a Div by 300 gives
300, not inf). So the emulated compile rewrites the graph into float32 containers and rounds
explicitly: every op that the chosen mode runs in float16 (or bfloat16) gets its float inputs and
outputs rounded by a Cast to the low type and back. Overflow (|x| > 65504 -> inf) and lost mantissa
bits then show exactly where a board would see them. Ops kept in float32 are left alone.

Which ops a mode lowers (--precision_mode_v2 / --precision_mode pages of the ATC docs):
- origin / must_keep_origin_dtype: each op keeps the graph's own dtype.
- fp16 / force_fp16: every float op runs in float16.
- cube_fp16in_fp32out / force_fp32: matrix (cube) ops take float16 inputs and give float32 outputs;
  every other op runs in float32, even where the graph says float16.
- allow_fp32_to_fp16: matrix ops run in float16, the others keep the graph's dtype.
- mixed_float16 / allow_mix_precision(_fp16), and the bfloat16 twins: float16 ops stay float16; a
  float32 op is lowered when it is on the white list, kept when on the black list, and a gray op
  follows the op before it. The built-in lists live in each chip's aic-<soc>-ops-info.json
  ("precision_reduce" flag), which the docs do not reproduce. ASSUMED here: the white list holds the
  matrix ops (the docs' one example, Conv2D, is white), the black list is empty, every other op is
  gray. A gray op is lowered when any of its non-constant float inputs comes from a lowered op; an
  explicit Cast passes that on (a Cast to float32 of float16 data does not shield what follows: the
  upstream project had to black-list Square, from RMSNorm's float32 pow(2), to stop an overflow).
  This errs towards lowering, so what survives here is more likely to survive on a board.

What this does not model: float16 accumulation inside an op (a float16 ReduceSum is summed in
float32 and rounded once), atc's fusions, and each kernel's own float16 algorithm.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, FLOAT16, BFLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16
LOW_TYPES = (FLOAT16, BFLOAT16)
FLOAT_TYPES = (FLOAT, FLOAT16, BFLOAT16)
TYPE_NAME = {FLOAT: "float32", FLOAT16: "float16", BFLOAT16: "bfloat16"}
CUBE = "cube"  # float16 in, float32 out

# ONNX op type -> the Ascend IR op types CANN's ONNX parser may map it to. The docs say a mixlist
# names Ascend IR op types; the names below are those of CANN's operator list as far as we know them
# (ASSUMED where an ONNX op could map to more than one). Other ops keep their ONNX name. Pow is
# listed as Square too because atc fuses Pow(x, 2) into Square.
ASCEND_IR = {
    "MatMul": ("MatMul", "MatMulV2", "BatchMatMul", "BatchMatMulV2"),
    "Gemm": ("Gemm", "MatMul", "MatMulV2"),
    "Conv": ("Conv2D", "Conv3D"),
    "ConvTranspose": ("Conv2DTranspose", "Conv3DTranspose"),
    "Pow": ("Pow", "Square"),
    "ReduceMean": ("ReduceMean", "ReduceMeanD"),
    "ReduceSum": ("ReduceSum", "ReduceSumD"),
    "Softmax": ("SoftmaxV2",),
    "Div": ("Div", "RealDiv"),
    "Gather": ("GatherV2",),
    "Where": ("Select",),
}
MATRIX_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum"})
DEFAULT_WHITE = frozenset(name for op in MATRIX_OPS for name in ASCEND_IR.get(op, (op,)))
DEFAULT_BLACK: frozenset[str] = frozenset()
# Ops that only move or select values: rounded inputs give rounded outputs, so no Cast is needed after them.
PASS_THROUGH = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather", "GatherElements",
                          "GatherND", "Concat", "Split", "Expand", "Identity", "Flatten", "Tile", "Where", "Neg",
                          "Abs", "Max", "Min", "Relu"})
SHAPE_ONLY = frozenset({"Shape", "Size"})

MODES = {
    # mode: (low type, rule)
    "origin": (None, "origin"), "must_keep_origin_dtype": (None, "origin"),
    "fp16": (FLOAT16, "all"), "force_fp16": (FLOAT16, "all"),
    "cube_fp16in_fp32out": (FLOAT16, "cube"), "force_fp32": (FLOAT16, "cube"),
    "allow_fp32_to_fp16": (FLOAT16, "matrix"), "allow_fp32_to_bf16": (BFLOAT16, "matrix"),
    "mixed_float16": (FLOAT16, "mixed"), "allow_mix_precision": (FLOAT16, "mixed"),
    "allow_mix_precision_fp16": (FLOAT16, "mixed"),
    "mixed_bfloat16": (BFLOAT16, "mixed"), "allow_mix_precision_bf16": (BFLOAT16, "mixed"),
}


class PrecisionError(ValueError):
    pass


@dataclass
class Lists:
    """Black, white and gray list membership after a --modify_mixlist file. A mixlist names Ascend IR op
    types; an entry applies to an ONNX op when it is one of the names that op may become (ASCEND_IR).
    Removals apply before additions, as in the docs' worked cases (black-list to-add A with white-list
    to-remove A leaves A black)."""
    mixlist: dict = field(default_factory=dict)

    @classmethod
    def from_mixlist(cls, mixlist: dict | None) -> "Lists":
        mixlist = mixlist or {}
        adds = [set(mixlist.get(key, {}).get("to-add", [])) for key in ("black-list", "white-list")]
        if adds[0] & adds[1]:
            raise PrecisionError(f"--modify_mixlist adds {', '.join(sorted(adds[0] & adds[1]))} to both the black "
                                 "and the white list")
        return cls(mixlist)

    def entries(self, key: str, action: str) -> set[str]:
        return set(self.mixlist.get(key, {}).get(action, []))

    def kind(self, op_type: str) -> str:
        names = set(ASCEND_IR.get(op_type, (op_type,)))
        kind = "white" if names & DEFAULT_WHITE else "black" if names & DEFAULT_BLACK else "gray"
        if kind == "black" and names & self.entries("black-list", "to-remove"):
            kind = "gray"
        if kind == "white" and names & self.entries("white-list", "to-remove"):
            kind = "gray"
        for key, result in (("gray-list", "gray"), ("white-list", "white"), ("black-list", "black")):
            if names & self.entries(key, "to-add"):
                kind = result
        return kind


@dataclass
class Report:
    mode: str
    low: str | None
    float32_ops: Counter = field(default_factory=Counter)
    lowered_ops: Counter = field(default_factory=Counter)
    rounding_casts: int = 0

    def as_header(self) -> dict:
        return {"mode": self.mode, "low_type": self.low, "float32_ops": dict(sorted(self.float32_ops.items())),
                "lowered_ops": dict(sorted(self.lowered_ops.items())), "rounding_casts": self.rounding_casts}


def is_emulated(mode: str) -> bool:
    return mode in MODES


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers, Constant outputs, and whatever is computed from them alone."""
    const = {t.name for t in graph.initializer}
    for node in graph.node:
        ins = [i for i in node.input if i]
        if node.op_type == "Constant" or (ins and all(i in const for i in ins)):
            const.update(node.output)
    return const


def original_precision(node: onnx.NodeProto, types: dict[str, int]) -> int | None:
    """The float type a node computes in, in the graph as exported (its lowest float type); None
    for nodes that compute nothing in floating point (Cast and Constant are handled on their own)."""
    if node.op_type in SHAPE_ONLY or node.op_type in ("Cast", "Constant"):
        return None
    found = {types.get(name) for name in [*node.input, *node.output] if name}
    return next((t for t in (FLOAT16, BFLOAT16, FLOAT) if t in found), None)


def decide(graph: onnx.GraphProto, types: dict[str, int], mode: str, lists: Lists) -> list[object]:
    """Per node: FLOAT, the low type, CUBE, or None (not a float computation)."""
    low, rule = MODES[mode]
    const = constant_tensors(graph)
    lowered = {vi.name for vi in graph.input if types.get(vi.name) in LOW_TYPES}
    plan: list[object] = []
    for node in graph.node:
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            if to in LOW_TYPES or node.input[0] in lowered:
                lowered.update(node.output)
            plan.append(None)
            continue
        orig = original_precision(node, types)
        if orig is None or rule == "origin":
            choice = orig
        elif rule == "all":
            choice = low
        elif rule == "cube":
            choice = CUBE if node.op_type in MATRIX_OPS else FLOAT
        elif rule == "matrix":
            choice = low if node.op_type in MATRIX_OPS else orig
        elif orig != FLOAT:
            choice = orig  # mixed modes lower float32 ops; they never raise a float16 op
        else:
            kind = lists.kind(node.op_type)
            inputs = [i for i in node.input if i and i not in const and types.get(i) in FLOAT_TYPES]
            choice = low if kind == "white" or (kind == "gray" and any(i in lowered for i in inputs)) else FLOAT
        plan.append(choice)
        if choice in LOW_TYPES:
            lowered.update(node.output)
    return plan


def _cast(source: str, target: str, to: int, prefix: str) -> onnx.NodeProto:
    return helper.make_node("Cast", [source], [target], to=to, name=f"{prefix}/{target}")


class _Builder:
    """Rewrites the graph into float32 containers with explicit rounding casts. `state` tracks, for
    every float tensor, the type its values are exactly representable in (FLOAT when unrounded)."""

    def __init__(self, graph: onnx.GraphProto, types: dict[str, int], report: Report):
        self.src = graph
        self.types = types
        self.report = report
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.state: dict[str, int] = {}
        self.alias: dict[str, str] = {}           # original name -> the float32 tensor that carries it
        self.rounded: dict[tuple[str, int], str] = {}
        self.weights = {t.name: t for t in graph.initializer}

    def is_float(self, name: str) -> bool:
        return self.types.get(name) in FLOAT_TYPES

    def take(self, name: str) -> str:
        return self.alias.get(name, name)

    def round_to(self, source: str, low: int, target: str) -> None:
        tmp = f"{target}__as_{TYPE_NAME[low]}"
        self.nodes += [_cast(source, tmp, low, "emu_round"), _cast(tmp, target, FLOAT, "emu_round")]
        self.report.rounding_casts += 1

    def rounded_input(self, name: str, low: int) -> str:
        """`name` with its values representable in `low`: as is, a weight stored in `low`, or a Cast pair."""
        if self.state.get(name) == low:
            return self.take(name)
        key = (name, low)
        if key not in self.rounded:
            target = f"{name}__{TYPE_NAME[low]}"
            if name in self.weights:
                self.store_weight(name, numpy_helper.to_array(self.weights[name]).astype(np.float32), low, target)
            else:
                self.round_to(self.take(name), low, target)
            self.rounded[key] = target
        return self.rounded[key]

    def store_weight(self, name: str, values: np.ndarray, low: int, target: str) -> None:
        """A weight kept in `low` with a Cast to float32 after it: onnxruntime folds the Cast when the
        session loads, and the emulated .om keeps float16 weights at float16 size."""
        stored = f"{name}__stored_{TYPE_NAME[low]}"
        self.inits.append(numpy_helper.from_array(values.astype(np.float16 if low == FLOAT16 else ml_dtypes.bfloat16),
                                                  stored))
        self.nodes.append(_cast(stored, target, FLOAT, "emu_weight"))

    def float_attributes(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """Constant values, ConstantOfShape fills and dtype attributes in a low type become float32
        (exactly: every float16 and bfloat16 value is a float32 value)."""
        out = onnx.NodeProto()
        out.CopyFrom(node)
        for attr in out.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in LOW_TYPES:
                value = numpy_helper.to_array(attr.t).astype(np.float32)
                attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
            elif attr.type == onnx.AttributeProto.INT and attr.name == "dtype" and attr.i in LOW_TYPES:
                attr.i = FLOAT
        for k, name in enumerate(node.input):
            if name:
                out.input[k] = self.take(name)
        return out

    def add_cast(self, node: onnx.NodeProto) -> None:
        to = next(a.i for a in node.attribute if a.name == "to")
        source, target = node.input[0], node.output[0]
        if to in LOW_TYPES:
            if self.state.get(source) == to:
                self.nodes.append(helper.make_node("Identity", [self.take(source)], [target], name=node.name))
            else:
                self.round_to(self.take(source), to, target)
            self.state[target] = to
            return
        self.nodes.append(self.float_attributes(node))
        if to == FLOAT:
            self.state[target] = self.state.get(source, FLOAT) if self.is_float(source) else FLOAT

    def add_node(self, node: onnx.NodeProto, choice) -> None:
        if node.op_type == "Cast":
            self.add_cast(node)
            return
        new = self.float_attributes(node)
        float_outputs = [o for o in node.output if o and self.is_float(o)]
        if choice is None:
            self.nodes.append(new)
            for name in float_outputs:
                self.state[name] = self.types[name] if node.op_type == "Constant" else FLOAT
            return
        low = FLOAT16 if choice == CUBE else choice if choice in LOW_TYPES else None
        if low:
            for k, name in enumerate(node.input):
                if name and self.is_float(name):
                    new.input[k] = self.rounded_input(name, low)
        if choice not in LOW_TYPES:
            self.nodes.append(new)
            for name in float_outputs:
                self.state[name] = FLOAT
            return
        exact = node.op_type in PASS_THROUGH and all(
            self.state.get(i) == choice for i in node.input if i and self.is_float(i))
        if not exact and len(float_outputs) > 1:
            raise PrecisionError(f"{node.op_type} node {node.name!r}: several float outputs are not emulated")
        if exact or not float_outputs:
            self.nodes.append(new)
        else:
            name = float_outputs[0]
            k = list(node.output).index(name)
            new.output[k] = f"{name}__raw"
            self.nodes.append(new)
            self.round_to(new.output[k], choice, name)
        for name in float_outputs:
            self.state[name] = choice

    def build(self, plan: list[object]) -> onnx.GraphProto:
        for t in self.src.initializer:
            if t.data_type in LOW_TYPES:
                self.inits.append(t)
                self.alias[t.name] = f"{t.name}__float32"
                self.nodes.append(_cast(t.name, self.alias[t.name], FLOAT, "emu_weight"))
                self.state[t.name] = t.data_type
            else:
                self.inits.append(t)
                if self.is_float(t.name):
                    self.state[t.name] = FLOAT
        inputs = [vi for vi in self.src.input if vi.name not in self.weights]
        for vi in inputs:
            if self.types.get(vi.name) in LOW_TYPES:
                self.alias[vi.name] = f"{vi.name}__float32"
                self.nodes.append(_cast(vi.name, self.alias[vi.name], FLOAT, "emu_io"))
                self.state[vi.name] = self.types[vi.name]
            elif self.is_float(vi.name):
                self.state[vi.name] = FLOAT
        for node, choice in zip(self.src.node, plan):
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise PrecisionError(f"{node.op_type} node {node.name!r}: subgraphs are not emulated")
            if node.op_type == "CastLike" and self.types.get(node.input[1]) in LOW_TYPES:
                raise PrecisionError(f"CastLike node {node.name!r}: a cast to a float16 tensor's type is not emulated")
            self.add_node(node, choice)
        for vi in self.src.output:
            if self.types.get(vi.name) in LOW_TYPES:
                self.narrow_output(vi.name, self.types[vi.name])
        used = {i for n in self.nodes for i in n.input}
        return helper.make_graph(self.nodes, self.src.name, inputs, list(self.src.output),
                                 [t for t in self.inits if t.name in used])

    def narrow_output(self, name: str, dtype: int) -> None:
        """A graph output keeps its dtype: its producer now writes float32, and a Cast narrows it."""
        wide = f"{name}__float32"
        for node in self.nodes:
            node.output[:] = [wide if o == name else o for o in node.output]
            node.input[:] = [wide if i == name else i for i in node.input]
        self.nodes.append(_cast(wide, name, dtype, "emu_io"))


def graph_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor, by ONNX shape inference on the graph's structure alone (weights
    become typed inputs, so a multi-GB model is not copied)."""
    g = model.graph
    weights = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer]
    skeleton = helper.make_model(helper.make_graph(list(g.node), g.name, [*g.input, *weights], list(g.output)),
                                 opset_imports=list(model.opset_import), ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False)
    types = {t.name: t.data_type for t in g.initializer}
    for vi in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def plan_for(model: onnx.ModelProto, mode: str, mixlist: dict | None) -> tuple[dict[str, int], list[object], Report]:
    """Tensor types, the per-node plan and its op counts; needs the graph structure only."""
    if mode not in MODES:
        raise PrecisionError(f"precision mode {mode!r} is not emulated")
    low, rule = MODES[mode]
    types = graph_types(model)
    plan = decide(model.graph, types, mode, Lists.from_mixlist(mixlist if rule == "mixed" else None))
    report = Report(mode, TYPE_NAME.get(low))
    for node, choice in zip(model.graph.node, plan):
        if choice == FLOAT:
            report.float32_ops[node.op_type] += 1
        elif choice is not None:
            report.lowered_ops[node.op_type] += 1
    return types, plan, report


def convert(model: onnx.ModelProto, mode: str, mixlist: dict | None = None) -> tuple[onnx.ModelProto, Report]:
    """The graph as a chip compiled in `mode` computes it (weights must be loaded). Graph inputs and
    outputs keep their dtypes; opsets and metadata are kept."""
    types, plan, report = plan_for(model, mode, mixlist)
    graph = _Builder(model.graph, types, report).build(plan)
    out = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                            producer_name=model.producer_name, producer_version=model.producer_version)
    out.metadata_props.extend(model.metadata_props)
    return out, report


def changes_nothing(types: dict[str, int], plan: list[object]) -> bool:
    return all(c in (FLOAT, None) for c in plan) and not any(t in LOW_TYPES for t in types.values())


def convert_file(src: Path, folder: Path, mode: str, mixlist: dict | None = None) -> tuple[Path, Report]:
    """convert() from file to file: the result goes to folder/<src name> (weights beside it in
    <name>.data when they reach 2 GB as float32). A graph the mode leaves as it is is returned as is."""
    structure = onnx.load(str(src), load_external_data=False)
    types, plan, report = plan_for(structure, mode, mixlist)
    if changes_nothing(types, plan):
        return src, report
    del structure
    model, report = convert(onnx.load(str(src)), mode, mixlist)
    dst = folder / src.name
    # Counted at float32 size: onnxruntime folds the weights' Casts, and a saved optimized graph
    # must then keep its weights outside the 2 GB protobuf too.
    widened = sum(len(t.raw_data) * (2 if t.data_type in LOW_TYPES else 1) for t in model.graph.initializer)
    big = widened > 1_800_000_000
    onnx.save_model(model, str(dst), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=f"{dst.name}.data", size_threshold=1024)
    return dst, report
