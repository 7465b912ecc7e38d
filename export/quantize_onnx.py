"""Weight-only quantization of an exported graph into onnxruntime's MatMulNBits (and, at 4 bits, the
embedding into GatherBlockQuantized), one weight band at a time.

    python export/quantize_onnx.py --input_model_path output/onnx/qwen2.5_coder_0.5b_instruct.onnx \
        --output_model_path output/onnx_int4/qwen2.5_coder_0.5b_instruct.onnx --bits 4

Only constant MatMul weights (and, at 4 bits, the embedding table) change; inputs, outputs, the KV
cache dtype and the metadata stay, so every session runs the result like the float graph. The weights
are read from the input's .data file in bands and quantized with onnxruntime's own kernels, so the
float graph is never in memory; the result equals what onnxruntime's MatMulNBitsQuantizer makes of the
whole model. By default an int4 model keeps its attention projections at int8 (--int8_nodes) and
quantizes the output projection to int4 in blocks of 32. To skip the float graph altogether:
export_onnx.py --target cpu --bits 4 makes the same default recipe in one pass.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from core.errors import UserError, run_main
from core.flags import ArgumentParser
from export.block_quant import DEFAULT_BLOCK, DEFAULT_INT8_NODES, QuantSpec
from export.export_onnx import peak_rss_mb
from export.onnx_weights import MS, StoredMatrix, WeightFile

PROG = "quantize_onnx.py"
# GatherBlockQuantized stores int4 (u)int tensors, which need opset 21 and IR version 10.
INT4_OPSET, INT4_IR = 21, 10
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


def parse_args(argv: list[str] | None = None) -> argparse.ArgumentParser:
    p = ArgumentParser(description="Quantize the weights of an exported ONNX model to 4 or 8 bits "
                                            "(MatMulNBits; activations and the KV cache stay in float).")
    p.add_argument("--input_model_path", required=True, help="the float .onnx from export_onnx.py")
    p.add_argument("--output_model_path", required=True, help="where to write the quantized .onnx")
    p.add_argument("--bits", type=int, choices=[4, 8], default=4, help="weight bits (default 4)")
    p.add_argument("--block_size", type=int, default=None,
                   help="weights per quantization block along the input dimension, a power of two >= 16; "
                        "larger blocks read fewer scale bytes per token (decode is bound by memory reads) "
                        "but fit the weights less closely (default 128 at 4 bits, 32 at 8 bits)")
    p.add_argument("--accuracy_level", type=int, choices=[0, 1, 2, 3, 4], default=4,
                   help="MatMulNBits compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations "
                        "(fastest on CPUs; default 4)")
    p.add_argument("--embedding", choices=["auto", "float", "quantize"], default="auto",
                   help="the token embedding table: quantize it with GatherBlockQuantized (4 bits only) or keep "
                        "it in float; auto quantizes it at 4 bits (default auto)")
    p.add_argument("--symmetric", action="store_true",
                   help="blocks without zero points; the default (blocks with zero points) measured a lower "
                        "int4 perplexity (30.27 against 30.85 at block 64, output projection int8)")
    p.add_argument("--lm_head_bits", type=int, choices=[4, 8], default=None,
                   help="weight bits of the output projection, the largest weight a decode step reads (default: 4 "
                        "in blocks of 32 for --bits 4, 8 for --bits 8; given explicitly, it uses --block_size unless "
                        "--lm_head_block_size is given)")
    p.add_argument("--method", choices=["rtn", "k_quant"], default="rtn",
                   help="how each block's scale and zero point are chosen: rtn, its range rounded to nearest; "
                        "k_quant, searched for the least weighted error as llama.cpp's k-quants do "
                        "(onnxruntime's implementation; slower to quantize) (default rtn)")
    p.add_argument("--lm_head_block_size", type=int, default=None,
                   help="the output projection's block size, a power of two >= 16 (default: 32 for the default int4 "
                        "head, else --block_size)")
    p.add_argument("--int8_nodes", default=None, metavar="REGEX",
                   help="MatMul nodes whose name matches this regular expression keep 8-bit weights, as llama.cpp's "
                        "k-quant mixes keep their most sensitive tensors at more bits; 'none' for none (default at "
                        "4 bits: 'self_attn', the attention projections, which cost the float model's answers most "
                        "per byte)")
    return p.parse_args(argv)



def _upgrade_for_int4(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert the graph (without its weights, which the converter never needs) to opset 21: only bumping
    the opset number would leave ops such as ReduceMean in their old form and break the graph."""
    from onnx import version_converter

    default = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if default >= INT4_OPSET:
        return model
    converted = version_converter.convert_version(model, INT4_OPSET)
    converted.ir_version = max(converted.ir_version, INT4_IR)
    return converted


def _float_matrix(inits: dict[str, TensorProto], name: str) -> TensorProto | None:
    t = inits.get(name)
    return t if t is not None and len(t.dims) == 2 and t.data_type in FLOAT_TYPES else None


def quantize(src: Path, dst: Path, spec: QuantSpec) -> dict[str, str]:
    """Write the quantized model to dst (its weights to dst.data) and return its metadata."""
    model = onnx.load(str(src), load_external_data=False)
    if spec.embedding:
        model = _upgrade_for_int4(model)
    graph, base = model.graph, src.parent
    inits = {t.name: t for t in graph.initializer}
    head = next((n.name for n in graph.node if "logits" in n.output), None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    w = WeightFile(dst.with_name(dst.name + ".data"))
    nodes, replaced = [], set()
    try:
        for node in graph.node:
            if node.op_type == "MatMul" and _float_matrix(inits, node.input[1]) is not None:
                bits = spec.node_bits(node.name, node.name == head)
                block = spec.head_block_size if node.name == head else spec.block_size
                weight = StoredMatrix(inits[node.input[1]], base, stored_transposed=True)
                n, k = weight.shape
                names = w.add_nbits(node.input[1], weight, bits, block, spec.symmetric, spec.method)
                attrs = dict(K=k, N=n, bits=bits, block_size=block)
                if spec.accuracy_level:
                    attrs["accuracy_level"] = spec.accuracy_level
                nodes.append(helper.make_node("MatMulNBits", [node.input[0]] + names, list(node.output),
                                              name=f"{node.name}_Q{bits}", domain=MS, **attrs))
                replaced.add(node.input[1])
            elif node.op_type == "Gather" and spec.embedding and _float_matrix(inits, node.input[0]) is not None:
                table = StoredMatrix(inits[node.input[0]], base, stored_transposed=False)
                names = w.add_gather_int4(node.input[0], table, spec.block_size, spec.symmetric)
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                nodes.append(helper.make_node("GatherBlockQuantized", [names[0], node.input[1]] + names[1:],
                                              list(node.output), name=f"{node.name}_Q4", domain=MS,
                                              gather_axis=axis, quantize_axis=1, block_size=spec.block_size))
                replaced.add(node.input[0])
            else:
                nodes.append(node)
        used = {name for node in nodes for name in node.input}
        for t in graph.initializer:
            if t.name in used and t.name not in replaced:
                w.add_copy(t, base)
    except BaseException:
        w.close()
        dst.with_name(dst.name + ".data").unlink(missing_ok=True)
        raise
    w.close()
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(w.tensors)
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    meta = {p.key: p.value for p in model.metadata_props}
    meta["quantization"] = spec.describe()
    onnx.helper.set_model_props(model, meta)
    onnx.save_model(model, str(dst))
    return meta


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    return run_main(PROG, lambda: run(a))


def run(a: argparse.Namespace) -> int:
    src, dst = Path(a.input_model_path), Path(a.output_model_path)
    if not src.is_file():
        raise UserError(f"--input_model_path {src}: no such file")
    if dst.suffix != ".onnx":
        raise UserError(f"--output_model_path {dst}: the file name must end in .onnx")
    if dst.resolve() == src.resolve():
        raise UserError("--output_model_path must differ from --input_model_path (the input's weights are read "
                        "lazily)")
    if a.block_size is None:
        a.block_size = DEFAULT_BLOCK[a.bits]
    for flag in ("block_size", "lm_head_block_size"):
        size = getattr(a, flag)
        if size is not None and (size < 16 or size & (size - 1)):
            raise UserError(f"--{flag} {size}: must be a power of two, at least 16")
    if a.method == "k_quant" and a.symmetric:
        raise UserError("--method k_quant chooses a zero point per block; it cannot be combined with --symmetric")
    if a.embedding == "quantize" and a.bits != 4:
        raise UserError("--embedding quantize needs --bits 4 (GatherBlockQuantized is only produced at 4 bits)")
    if a.int8_nodes is None:
        a.int8_nodes = DEFAULT_INT8_NODES[a.bits]
    elif a.int8_nodes == "none":
        a.int8_nodes = None
    if a.int8_nodes is not None:
        try:
            re.compile(a.int8_nodes)
        except re.error as e:
            raise UserError(f"--int8_nodes {a.int8_nodes!r}: not a regular expression ({e})")
    try:
        meta = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # anything onnx cannot parse is the user's input problem, said once
        raise UserError(f"--input_model_path {src}: not a readable ONNX model ({e})")
    if "quantization" in {p.key for p in meta.metadata_props}:
        raise UserError(f"--input_model_path {src}: already quantized; start from the float export")
    start = time.perf_counter()
    embedding = a.embedding == "quantize" or (a.embedding == "auto" and a.bits == 4)
    spec = QuantSpec(bits=a.bits, block_size=a.block_size, accuracy_level=a.accuracy_level, symmetric=a.symmetric,
                     embedding=embedding, lm_head_bits=a.lm_head_bits, lm_head_block_size=a.lm_head_block_size,
                     method=a.method,
                     int8_nodes=a.int8_nodes)
    meta = quantize(src, dst, spec)
    print(f"wrote {dst} ({meta['quantization']}) in {time.perf_counter() - start:.1f}s, peak memory "
          f"{peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
