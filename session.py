"""Open the session --session_type asks for. A Session runs an exported model: one call adds tokens to
its KV cache and returns logits (the interface and the power-of-two prefill are in backends/base.py).

`open_session` picks the backend (for onnx: the graph the model's metadata records) and imports only
that one, so onnxruntime, torch and pyACL stay optional for each other.
"""
from __future__ import annotations

from backends.base import Session, checked_meta, prefill_chunks
from config import InferenceConfig
from core.errors import UserError

__all__ = ["Session", "open_session", "prefill_chunks"]


def open_session(config: InferenceConfig) -> Session:
    """The session --session_type asks for; only its backend module is imported."""
    kind = config.session.session_type
    if kind == "onnx":
        meta = checked_meta(config)
        if meta.get("target") == "cpu":
            from backends.onnx_cpu_graph import OnnxCpuGraphSession
            return OnnxCpuGraphSession(config, meta)
        from backends.onnx_npu_graph import OnnxSession
        return OnnxSession(config, meta)
    if kind == "pytorch":
        from backends.torch_reference import PyTorchSession
        return PyTorchSession(config)
    if kind == "acl":
        from backends.acl import AclSession
        return AclSession(config)
    raise UserError(f"--session_type {kind}: not a session type (onnx, pytorch, acl)")
