"""Write a HuggingFace Qwen2/Qwen3 directory (e.g. a tiny test model) as a GGUF file.

Only what the tests need: float32 tensors, or Q8_0 for the 2-D matrices to exercise the
dequantisation path of export/gguf_to_hf.py, plus the tokenizer and chat template metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file
from transformers import AutoTokenizer

# HF module name inside a decoder layer -> GGUF tensor name inside `blk.N`.
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in TOP_NAMES:
        return TOP_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.N.<module>.<weight|bias>
    module, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_NAMES[module]}.{suffix}"


def add_metadata(writer: gguf.GGUFWriter, config: dict) -> None:
    writer.add_name("tiny test model")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    if config.get("head_dim"):
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])


def add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    by_id = {i: token for token, i in tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True).items()}
    special, added = set(tokenizer.all_special_tokens), set(tokenizer.get_added_vocab())
    tokens, types = [], []
    # Like llama.cpp, pad the token list to the model's (rounded-up) vocabulary with unused entries.
    for i in range(vocab_size):
        token = by_id.get(i)
        tokens.append(token if token is not None else f"[PAD{i}]")
        if token is None:
            types.append(gguf.TokenType.UNUSED)
        elif token in special:
            types.append(gguf.TokenType.CONTROL)
        elif token in added:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_bos_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


def write_gguf(model_dir: Path, out_path: Path, *, quantize: bool = False) -> Path:
    """Write `model_dir` as a GGUF at `out_path`; with `quantize`, 2-D weights are stored as Q8_0."""
    config = json.loads((model_dir / "config.json").read_text())
    writer = gguf.GGUFWriter(str(out_path), config["model_type"])
    add_metadata(writer, config)
    add_tokenizer(writer, model_dir, config["vocab_size"])
    for name, array in load_file(str(model_dir / "model.safetensors")).items():
        array = np.ascontiguousarray(array, dtype=np.float32)
        if quantize and array.ndim == 2:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(array, q8), raw_dtype=q8)
        else:
            writer.add_tensor(gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
