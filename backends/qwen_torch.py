"""A compact Qwen (1.5 / 2 / 2.5 / 3) decoder in PyTorch: what the torch backend (backends/torch_reference.py)
runs, and the reference the exporters are held to (export/npu_graph.py writes the graph this model's trace
gives, without torch; tests/traced_export.py traces it).

Its forward pass *is* the ONNX graph contract: new tokens plus a static KV cache laid out as
[batch, kv_len, num_layers * 2 * num_kv_heads, head_dim] go in, logits and the new tokens' keys and
values (same layout) come out. Parameter names follow the HF checkpoints so safetensors load directly.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from core.contract import ModelShape


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # The variance is taken in float32: in float16 the sum of squares of a 896-wide row overflows.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, a: ModelShape):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = a.num_attention_heads, a.num_key_value_heads, a.head_dim
        self.q_proj = nn.Linear(a.hidden_size, self.heads * a.head_dim, bias=a.qkv_bias)
        self.k_proj = nn.Linear(a.hidden_size, self.kv_heads * a.head_dim, bias=a.qkv_bias)
        self.v_proj = nn.Linear(a.hidden_size, self.kv_heads * a.head_dim, bias=a.qkv_bias)
        self.o_proj = nn.Linear(self.heads * a.head_dim, a.hidden_size, bias=False)
        if a.qk_norm:
            self.q_norm = RMSNorm(a.head_dim, a.rms_norm_eps)
            self.k_norm = RMSNorm(a.head_dim, a.rms_norm_eps)
        self.qk_norm = a.qk_norm

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
                past_k: Tensor, past_v: Tensor, b: int, s: int) -> tuple[Tensor, Tensor, Tensor]:
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        keys = torch.cat((past_k, k), dim=1).permute(0, 2, 3, 1)   # [b, kvh, d, t]
        values = torch.cat((past_v, v), dim=1).transpose(1, 2)     # [b, kvh, t, d]
        # Grouped-query attention without copying the cache: the query heads of one KV head are
        # stacked on a group axis, and matmul broadcasts the shared keys/values over it.
        group = self.heads // self.kv_heads
        qg = q.transpose(1, 2).reshape(b, self.kv_heads, group, s, self.head_dim)
        scores = torch.matmul(qg, keys.unsqueeze(2)) * (self.head_dim ** -0.5) + mask
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, values.unsqueeze(2))              # [b, kvh, group, s, d]
        out = out.reshape(b, self.heads, s, self.head_dim).transpose(1, 2).reshape(b, s, -1)
        return self.o_proj(out), k, v


class MLP(nn.Module):
    def __init__(self, a: ModelShape):
        super().__init__()
        self.gate_proj = nn.Linear(a.hidden_size, a.intermediate_size, bias=False)
        self.up_proj = nn.Linear(a.hidden_size, a.intermediate_size, bias=False)
        self.down_proj = nn.Linear(a.intermediate_size, a.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, a: ModelShape):
        super().__init__()
        self.input_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.self_attn = Attention(a)
        self.post_attention_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.mlp = MLP(a)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
                past_k: Tensor, past_v: Tensor, b: int, s: int) -> tuple[Tensor, Tensor, Tensor]:
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_k, past_v, b, s)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class Decoder(nn.Module):
    def __init__(self, a: ModelShape):
        super().__init__()
        self.embed_tokens = nn.Embedding(a.vocab_size, a.hidden_size)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.num_hidden_layers))
        self.norm = RMSNorm(a.hidden_size, a.rms_norm_eps)


def rope_inv_freq(a: ModelShape) -> Tensor:
    return 1.0 / (a.rope_theta ** (torch.arange(0, a.head_dim, 2, dtype=torch.float32) / a.head_dim))


class QwenForExport(nn.Module):
    """forward(input_ids, attention_mask, position_ids, past_key_values) -> (logits, out_key_values)."""

    def __init__(self, a: ModelShape):
        super().__init__()
        self.args = a
        self.model = Decoder(a)
        self.lm_head = nn.Linear(a.hidden_size, a.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(a), persistent=False)

    def rope(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        freqs = position_ids.unsqueeze(-1).float() * self.inv_freq   # [b, s, d/2]
        angles = torch.cat((freqs, freqs), dim=-1).unsqueeze(2)       # [b, s, 1, d]
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def causal_mask(self, attention_mask: Tensor, seq: int, dtype: torch.dtype) -> Tensor:
        """Additive mask [b, 1, 1, s, kv+s] built from comparisons (no Trilu, which atc handles badly)."""
        total = attention_mask.shape[1]
        cols = torch.arange(total, device=attention_mask.device)
        rows = torch.arange(seq, device=attention_mask.device) + (total - seq)
        allowed = (cols.unsqueeze(0) <= rows.unsqueeze(1)) & (attention_mask[:, None, :] > 0)
        # A large finite negative, not -inf: a fully masked (padding) row must not turn into NaN.
        blocked = torch.tensor(torch.finfo(dtype).min / 2, dtype=dtype)
        zero = torch.zeros((), dtype=dtype)
        return torch.where(allowed, zero, blocked)[:, None, None]

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                past_key_values: Tensor) -> tuple[Tensor, Tensor]:
        a = self.args
        x = self.model.embed_tokens(input_ids)
        dtype = x.dtype
        cos, sin = self.rope(position_ids, dtype)
        mask = self.causal_mask(attention_mask, input_ids.shape[1], dtype)
        h = a.num_key_value_heads
        # Every layer reshapes by (batch, seq) taken here, once: in the exported graph the layers then
        # share one shape computation, which onnxruntime merges, instead of ~30 small nodes per layer.
        b, s = input_ids.shape
        new_kv = []
        for i, layer in enumerate(self.model.layers):
            base = i * 2 * h
            x, k, v = layer(x, cos, sin, mask,
                            past_key_values[:, :, base:base + h], past_key_values[:, :, base + h:base + 2 * h], b, s)
            new_kv += [k, v]
        logits = self.lm_head(self.model.norm(x))
        return logits, torch.cat(new_kv, dim=2)


def _weight_files(hf_model_dir: Path) -> list[Path]:
    files = sorted(hf_model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {hf_model_dir}")
    return files


def load_model(hf_model_dir: str | Path, dtype: torch.dtype = torch.float32) -> QwenForExport:
    """Build the model on the meta device and fill it tensor by tensor from safetensors, so peak
    memory stays near one copy of the weights in the target dtype."""
    from safetensors import safe_open

    hf_model_dir = Path(hf_model_dir)
    args = ModelShape.from_dir(hf_model_dir)
    with torch.device("meta"):
        model = QwenForExport(args)
    wanted = dict(model.named_parameters())
    state: dict[str, Tensor] = {}
    for path in _weight_files(hf_model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name in wanted:
                    state[name] = f.get_tensor(name).to(dtype)
    if args.tie_word_embeddings or "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ValueError(f"weights missing from {hf_model_dir}: {', '.join(missing[:5])}")
    model.load_state_dict(state, assign=True)
    model.inv_freq = rope_inv_freq(args)  # buffers are not in the checkpoint; the meta one must be rebuilt
    return model.eval()
