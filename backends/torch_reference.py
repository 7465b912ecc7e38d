"""PyTorchSession: our export model run eagerly in torch, the reference the ONNX graphs are checked against."""
from __future__ import annotations

import numpy as np

from backends.host_cache import HostCacheSession
from config import InferenceConfig


class PyTorchSession(HostCacheSession):
    def __init__(self, config: InferenceConfig):
        import torch

        from export.qwen_model import load_model

        s = config.session
        dtype = s.dtype or "float32"
        torch.set_num_threads(s.threads)
        self.torch = torch
        self.model = load_model(s.hf_model_dir, getattr(torch, dtype))
        super().__init__(config, dtype)

    def _forward(self, input_ids: np.ndarray, n_logits: int) -> np.ndarray | None:
        t = self.torch
        mask, positions, past = self.cache.step_inputs(input_ids.shape[1])
        with t.inference_mode():
            logits, new_kv = self.model(t.from_numpy(input_ids), t.from_numpy(mask), t.from_numpy(positions),
                                        t.from_numpy(past))
        self.cache.append(new_kv.numpy())
        return logits[0, input_ids.shape[1] - n_logits:].float().numpy() if n_logits else None
