"""List the ops of an ONNX graph that CANN's ONNX parser does not document, before atc is run.

    python export/check_ops.py output/onnx2/model.onnx

Exit 0 when every op is documented, 1 when some are not (they are listed), 2 on a bad path.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx

from core.flags import ArgumentParser, add_flags, from_args, option

# The operator names of "支持ONNX算子清单" in the CANN 8.0.0 operator reference
# (hiascend.com/doc_center/source/zh/canncommercial/800/apiref/aolapi/operatorlist_00176.html), spelled as
# ONNX spells them. That page scopes the list to the "Atlas inference series"; for other chips it is a
# guide, not a guarantee, and opset limits per op are not checked here.
CANN_ONNX_OPS = frozenset("""
Abs Acos Acosh AdaptiveAvgPool2D Add AffineGrid And ArgMax ArgMin AscendAntiQuant AscendQuant Asin Asinh
Atan Atanh AveragePool BatchNormalization BatchMultiClassNMS BitShift BitwiseAnd BitwiseNot BitwiseOr
BitwiseXor Cast Ceil Celu Clip Compress Concat Constant ConstantOfShape Conv ConvTranspose Corr Cos Cosh
CumSum DeformableConv2D DepthToSpace Det Div Dropout DynSeqOuter Einsum Elu EmbeddingBag Equal Erf Exp
Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GRU Hardmax HardSigmoid HardSwish Identity If
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
LpNormalization LpPool LRN LSTM LSTMP MatMul Max MaxPool MaxRoiPool MaxUnpool Mean
MeanVarianceNormalization Min Mod MovingSumWithSigmoid Mul Multinomial Neg NonMaxSuppression NonZero Not
OneHot Or Pad Pow RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMean ReduceMin ReduceProd ReduceSumSquare ReduceSum ReduceMax
Relu Reshape Resize ReverseSequence RoiAlign RoiExtractor Round PRelu Scatter ScatterElements ScatterND
Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax SoftmaxCrossEntropyLoss Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TfIdfVectorizer ThresholdedRelu Tile TopK Transpose
Trilu Unsqueeze Where Xor
""".split())
DEFAULT_DOMAINS = ("", "ai.onnx")


def graph_ops(graph: onnx.GraphProto) -> Counter:
    """Op types with their counts, subgraphs (If/Loop bodies) included; ops of other domains are
    named domain::op, since atc's ONNX parser only maps the default domain."""
    ops: Counter = Counter()
    for node in graph.node:
        ops[node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"] += 1
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                ops.update(graph_ops(sub))
    return ops


def unlisted_ops(model: onnx.ModelProto) -> dict[str, int]:
    """The ops outside CANN's documented ONNX op list, with how often each occurs."""
    return {op: n for op, n in sorted(graph_ops(model.graph).items()) if op not in CANN_ONNX_OPS}


@dataclass
class CheckOpsOptions:
    onnx_model_path: str = option(positional=True, help="the .onnx to check (weights are not read)")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="List ops of an ONNX graph outside CANN's documented ONNX op set.")
    add_flags(p, CheckOpsOptions)
    a = from_args(CheckOpsOptions, p.parse_args(argv))
    path = Path(a.onnx_model_path)
    if not path.is_file():
        print(f"check_ops.py: error: {path}: no such file", file=sys.stderr)
        return 2
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises several unrelated types for a non-ONNX file
        print(f"check_ops.py: error: {path}: not a readable ONNX model ({type(e).__name__})", file=sys.stderr)
        return 2
    missing = unlisted_ops(model)
    if not missing:
        print(f"{path}: all {len(graph_ops(model.graph))} op types are in CANN's documented ONNX op list")
        return 0
    for op, n in missing.items():
        print(f"{op}: {n} node(s) not in CANN's documented ONNX op list")
    return 1


if __name__ == "__main__":
    sys.exit(main())
