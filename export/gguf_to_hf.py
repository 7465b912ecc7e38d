"""Convert a Qwen2-family GGUF file into a HuggingFace model directory.

The output holds config.json, model.safetensors (dequantised, in --dtype), the tokenizer with the
GGUF's chat template, and a generation_config.json whose eos list covers both `<|im_end|>` and
`<|endoftext|>`, so everything downstream (export_onnx.py, cli_chat.py, api.py) can load it offline.

Weights are dequantised by transformers' own GGUF reader (`load_gguf_checkpoint`) into a plain,
unquantised model skeleton: `from_pretrained(gguf_file=...)` would mark the model as
gguf-quantised, which `save_pretrained` refuses, and it also needs `accelerate`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


from core.errors import UserError, run_main
from export.checksum import file_sha256

PROG = "gguf_to_hf.py"
GGUF_MAGIC = b"GGUF"
SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3")
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


def open_gguf(path: Path):
    """Parse the GGUF header, turning every way it can be corrupt into a one-line UserError."""
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as err:  # the reader raises assorted types on corrupt or truncated files
        raise UserError(f"--gguf_path {path} is not a readable GGUF file: {err}") from None


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


def load_config(gguf_path: Path, reader):
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
    head_dim = gguf_head_dim(reader, config.model_type)
    if head_dim is not None:
        config.head_dim = head_dim
    return config


def gguf_head_dim(reader, arch: str) -> int | None:
    """`{arch}.attention.key_length` if the GGUF records it.

    transformers' GGUF config reader ignores this key and assumes hidden_size / num_heads, which
    is wrong for models such as Qwen3-0.6B (hidden 1024, 16 heads, head_dim 128).
    """
    field = reader.fields.get(f"{arch}.attention.key_length")
    return None if field is None else int(field.contents())


def build_model(gguf_path: Path, config, dtype):
    """Plain `*ForCausalLM` in `dtype` with the GGUF's dequantised weights loaded."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # A meta-device skeleton costs no memory; its only use before loading is naming the parameters.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model, torch_dtype=dtype)
    state = parsed["tensors"]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [name for name in missing if name != "lm_head.weight"]
    if unexpected:
        raise UserError(f"GGUF tensors not used by {type(model).__name__}: {', '.join(sorted(unexpected)[:5])}")
    if missing:
        raise UserError(f"GGUF lacks weights for: {', '.join(sorted(missing)[:5])}")
    # Non-persistent buffers (rotary inv_freq) are not in the GGUF; they are rebuilt on load, and
    # save_pretrained skips them, so staying on meta is harmless. Parameters must all be real.
    still_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise UserError(f"weights left uninitialised: {', '.join(still_meta[:5])}")
    return model


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


def write_outputs(gguf_path: Path, reader, work_dir: Path, dtype_name: str) -> None:
    import torch

    dtype = getattr(torch, dtype_name)
    started = time.monotonic()
    log(f"reading config and tokenizer from {gguf_path}")
    config = load_config(gguf_path, reader)
    tokenizer = load_tokenizer(gguf_path)
    log(f"{config.model_type}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}")
    model = build_model(gguf_path, config, dtype)
    model.generation_config = generation_config_for(tokenizer, config)
    log(f"saving {dtype_name} weights to {work_dir}")
    # One file keeps re-runs with --force from leaving stale shards next to a new index.
    model.save_pretrained(str(work_dir), safe_serialization=True, max_shard_size="1000GB")
    tokenizer.save_pretrained(str(work_dir))
    log(f"converted in {time.monotonic() - started:.1f}s")


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


def convert(gguf_path: Path, reader, out_dir: Path, dtype_name: str) -> None:
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    # Build beside the output (same filesystem) so the final moves are renames, never copies.
    work_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=parent))
    try:
        write_outputs(gguf_path, reader, work_dir, dtype_name)
        move_into(work_dir, out_dir)
    finally:
        # The temporary directory is ours alone; removing it never touches user files.
        shutil.rmtree(work_dir, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--gguf_path", type=Path, required=True, help="GGUF file to convert")
    parser.add_argument("--output_dir", type=Path, required=True, help="HuggingFace model directory to write")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype of the saved weights")
    parser.add_argument("--sha256", help="expected sha256 of the GGUF; a mismatch aborts")
    parser.add_argument("--force", action="store_true", help="convert again even if output_dir is complete")
    return parser


def run(args: argparse.Namespace) -> int:
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
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
