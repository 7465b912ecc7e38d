"""Convert a Qwen2-family GGUF file into a HuggingFace model directory.

The output holds config.json, model.safetensors (dequantised, in --dtype), the tokenizer with the
GGUF's chat template, and a generation_config.json whose eos list covers both `<|im_end|>` and
`<|endoftext|>`, so everything downstream (export_onnx.py, cli_chat.py, api.py) can load it offline.

Weights are streamed: each GGUF tensor is read a band of rows at a time (plain reads, no mmap, so the
RSS stays at one band), dequantised with the `gguf` package, cast and appended to model.safetensors,
whose header is known up front from the GGUF's tensor table. No model is built, so memory does not grow
with the model. The config and tokenizer are read by transformers' GGUF support, as before.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from core.contract import ModelShape
from core.errors import UserError, run_main
from core.flags import ArgumentParser, add_flags, from_args, option
from export.checksum import file_sha256
from export.safetensors_io import SafetensorsWriter, bf16_to_f32, f32_to_bf16

PROG = "gguf_to_hf.py"
GGUF_MAGIC = b"GGUF"
SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3")
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
DTYPES = ("bfloat16", "float16", "float32")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Tokens that end a turn in Qwen chat models; generation must stop on either.
EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")


def log(message: str) -> None:
    print(f"[gguf_to_hf] {message}", file=sys.stderr, flush=True)


def check_gguf(path: Path) -> None:
    """Cheap checks that `path` is a GGUF at all, before hashing or parsing it."""
    if not path.exists():
        raise UserError(f"--gguf_path {path} does not exist")
    if not path.is_file():
        raise UserError(f"--gguf_path {path} is not a file")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"--gguf_path {path} is not a GGUF file (bad magic)")


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: object  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # as GGUF lists it, innermost dim first
    n_bytes: int
    data_offset: int


@dataclass(frozen=True)
class GGUFIndex:
    """What the conversion needs of a GGUF's header: its tensor table and head sizes. gguf's reader
    makes a Python object of every vocabulary entry (~0.5 GB for Qwen's 151k tokens); it is dropped
    once this is taken from it, before transformers parses the header again for config and tokenizer."""
    tensors: list[GGUFTensor]
    key_lengths: dict[str, int]


def open_gguf(path: Path) -> GGUFIndex:
    """Parse the GGUF header, turning every way it can be corrupt into a one-line UserError."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        tensors = [GGUFTensor(t.name, t.tensor_type, tuple(int(x) for x in t.shape), int(t.n_bytes),
                              int(t.data_offset)) for t in reader.tensors]
        key_lengths = {k: int(f.contents()) for k, f in reader.fields.items() if k.endswith(".attention.key_length")}
    except Exception as err:  # the reader raises assorted types on corrupt or truncated files
        raise UserError(f"--gguf_path {path} is not a readable GGUF file: {err}") from None
    return GGUFIndex(tensors, key_lengths)


def is_converted(out_dir: Path) -> bool:
    """True when `out_dir` already holds a complete conversion (config, weights, tokenizer)."""
    return (
        (out_dir / "config.json").is_file()
        and any(out_dir.glob("*.safetensors"))
        and any((out_dir / name).is_file() for name in TOKENIZER_FILES)
    )


def token_id(tokenizer, token: str) -> int | None:
    """Id of `token` if it is a single known token of the vocabulary, else None."""
    ids = tokenizer.convert_tokens_to_ids([token])
    if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
        return None
    return int(ids[0])


def load_config(gguf_path: Path, index: GGUFIndex):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (ValueError, KeyError, NotImplementedError) as err:
        raise UserError(f"cannot read the model config from {gguf_path}: {str(err).splitlines()[0]}") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"{gguf_path} holds a {config.model_type!r} model; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    # The config read from a GGUF carries the gguf quantisation marker; the output is a plain model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # transformers files the GGUF's free-text general.name here; it is no path and misleads readers.
    if hasattr(config, "_model_name_or_path"):
        del config._model_name_or_path
    head_dim = gguf_head_dim(index, config.model_type)
    if head_dim is not None:
        config.head_dim = head_dim
    return config


def gguf_head_dim(index: GGUFIndex, arch: str) -> int | None:
    """`{arch}.attention.key_length` if the GGUF records it.

    transformers' GGUF config reader ignores this key and assumes hidden_size / num_heads, which
    is wrong for models such as Qwen3-0.6B (hidden 1024, 16 heads, head_dim 128).
    """
    return index.key_lengths.get(f"{arch}.attention.key_length")


# HF module inside a decoder layer, by its GGUF name inside `blk.N` (llama.cpp's naming for Qwen2/Qwen3).
LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
SAFETENSORS_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
BAND_BYTES = 64 * 2 ** 20  # float32 bytes of dequantised rows held at once


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in TOP_NAMES:
        return TOP_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def expected_weights(config) -> set[str]:
    from export.npu_graph import required_weights

    args = ModelShape.from_hf_config(config.to_dict())
    names = set(required_weights(args))
    if not config.tie_word_embeddings:
        names.add("lm_head.weight")
    return names


def plan_tensors(index: GGUFIndex, config) -> list[tuple[str, GGUFTensor]]:
    """(HF name, GGUF tensor) for every weight, in the GGUF's order; UserError on unknown or missing ones."""
    plan, unknown = [], []
    for t in index.tensors:
        name = hf_name(t.name)
        if name is None:
            unknown.append(t.name)
        else:
            plan.append((name, t))
    if unknown:
        raise UserError(f"GGUF tensors not used by a {config.model_type} model: {', '.join(sorted(unknown)[:5])}")
    missing = expected_weights(config) - {name for name, _ in plan}
    if missing:
        raise UserError(f"GGUF lacks weights for: {', '.join(sorted(missing)[:5])}")
    return plan


def dequantised_bands(path: Path, t: GGUFTensor) -> Iterator[np.ndarray]:
    """The tensor's rows as float32, a band at a time, read with plain reads from the file."""
    from gguf import GGMLQuantizationType, dequantize

    shape = tuple(int(x) for x in reversed(t.shape))   # GGUF lists dims innermost first
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    row_bytes = t.n_bytes // rows
    step = max(1, BAND_BYTES // (4 * shape[-1]))
    with open(path, "rb", buffering=0) as f:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            raw = np.empty(n * row_bytes, np.uint8)
            f.seek(t.data_offset + start * row_bytes)
            if f.readinto(memoryview(raw)) != raw.nbytes:
                raise UserError(f"{path}: truncated data for tensor {t.name}")
            if t.tensor_type == GGMLQuantizationType.F32:
                band = raw.view(np.float32)
            elif t.tensor_type == GGMLQuantizationType.F16:
                band = raw.view(np.float16).astype(np.float32)
            elif t.tensor_type == GGMLQuantizationType.BF16:
                band = bf16_to_f32(raw.view(np.uint16))
            else:
                band = dequantize(raw.reshape(n, row_bytes), t.tensor_type).astype(np.float32, copy=False)
            yield band.reshape((n,) + shape[1:] if len(shape) > 1 else shape)


def write_weights(gguf_path: Path, index: GGUFIndex, config, out: Path, dtype_name: str) -> None:
    plan = plan_tensors(index, config)
    if config.tie_word_embeddings:
        plan = [(name, t) for name, t in plan if name != "lm_head.weight"]
    st_dtype = SAFETENSORS_DTYPES[dtype_name]
    specs = [(name, st_dtype, tuple(int(x) for x in reversed(t.shape))) for name, t in plan]
    writer = SafetensorsWriter(out, specs, metadata={"format": "pt"})
    for name, t in plan:
        for band in dequantised_bands(gguf_path, t):
            if st_dtype == "BF16":
                band = f32_to_bf16(band)
            elif st_dtype == "F16":
                band = band.astype(np.float16)
            writer.write(name, band)
    writer.close()


def load_tokenizer(gguf_path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    if not tokenizer.chat_template:
        raise UserError(f"{gguf_path} has no chat template (tokenizer.chat_template)")
    return tokenizer


def generation_config_for(tokenizer, config):
    from transformers import GenerationConfig

    eos_ids = [i for i in (token_id(tokenizer, t) for t in EOS_TOKENS) if i is not None]
    if not eos_ids and config.eos_token_id is not None:
        eos_ids = [int(config.eos_token_id)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else token_id(tokenizer, "<|endoftext|>")
    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )


def write_outputs(gguf_path: Path, index: GGUFIndex, work_dir: Path, dtype_name: str) -> None:
    started = time.monotonic()
    log(f"reading config and tokenizer from {gguf_path}")
    config = load_config(gguf_path, index)
    tokenizer = load_tokenizer(gguf_path)
    log(f"{config.model_type}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}")
    log(f"writing {dtype_name} weights to {work_dir}, one tensor at a time")
    # One file keeps re-runs with --force from leaving stale shards next to a new index.
    write_weights(gguf_path, index, config, work_dir / "model.safetensors", dtype_name)
    config.architectures = [ARCHITECTURES[config.model_type]]
    config.dtype = dtype_name
    config.save_pretrained(str(work_dir))
    generation_config_for(tokenizer, config).save_pretrained(str(work_dir))
    tokenizer.save_pretrained(str(work_dir))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    log(f"converted in {time.monotonic() - started:.1f}s, peak memory {peak_mb:.0f} MB")


def move_into(work_dir: Path, out_dir: Path) -> None:
    """Move the files of `work_dir` into `out_dir`, config.json last so its presence means done."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in work_dir.iterdir())
    if "config.json" in names:
        names.remove("config.json")
        names.append("config.json")
    for name in names:
        # Some writers create files 0600 via temp files; the model dir should be readable as usual.
        (work_dir / name).chmod(0o644)
        os.replace(work_dir / name, out_dir / name)


def convert(gguf_path: Path, index: GGUFIndex, out_dir: Path, dtype_name: str) -> None:
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    # Build beside the output (same filesystem) so the final moves are renames, never copies.
    work_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=parent))
    try:
        write_outputs(gguf_path, index, work_dir, dtype_name)
        move_into(work_dir, out_dir)
    finally:
        # The temporary directory is ours alone; removing it never touches user files.
        shutil.rmtree(work_dir, ignore_errors=True)


@dataclass
class ConvertOptions:
    gguf_path: Path = option(help="GGUF file to convert")
    output_dir: Path = option(help="HuggingFace model directory to write")
    dtype: str = option("bfloat16", choices=tuple(DTYPES), help="dtype of the saved weights")
    sha256: str | None = option(None, help="expected sha256 of the GGUF; a mismatch aborts")
    force: bool = option(False, help="convert again even if output_dir is complete")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_flags(parser, ConvertOptions)
    return parser


def run(args: ConvertOptions) -> int:
    gguf_path: Path = args.gguf_path
    out_dir: Path = args.output_dir
    check_gguf(gguf_path)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output_dir {out_dir} exists and is not a directory")
    if args.sha256:
        log(f"checking sha256 of {gguf_path}")
        actual = file_sha256(gguf_path)
        if actual != args.sha256.strip().lower():
            raise UserError(f"sha256 mismatch for {gguf_path}: got {actual}, expected {args.sha256}", code=1)
    if is_converted(out_dir) and not args.force:
        log(f"{out_dir} is up to date (config, weights and tokenizer present); use --force to convert again")
        return 0
    convert(gguf_path, open_gguf(gguf_path), out_dir, args.dtype)
    log(f"wrote {out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = from_args(ConvertOptions, build_parser().parse_args(argv))
    return run_main(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
