"""PyTorchSession: our export model run eagerly in torch, the reference the ONNX graphs are checked against."""
from __future__ import annotations

import numpy as np

from backends.host_cache import HostCacheSession
from config import InferenceConfig


class PyTorchSession(HostCacheSession):
    def __init__(self, config: InferenceConfig):
        import torch

        from backends.qwen_torch import load_model

        s = config.session
        dtype = s.dtype or "float32"
        torch.set_num_threads(s.threads)
        self.torch = torch
        self.model = load_model(s.hf_model_dir, getattr(torch, dtype))
        super().__init__(config, dtype)

    def _run(self, input_ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: np.ndarray):
        t = self.torch
        with t.inference_mode():
            logits, new_kv = self.model(t.from_numpy(np.ascontiguousarray(input_ids)), t.from_numpy(mask),
                                        t.from_numpy(positions), t.from_numpy(past))
        return logits, new_kv.numpy()

    def _forward_row(self, input_ids: np.ndarray, n_logits: int, row: int) -> np.ndarray | None:
        mask, positions, past = self.cache.step_inputs(input_ids.shape[1], row)
        logits, new_kv = self._run(input_ids, mask, positions, past)
        self.cache.append(new_kv, row)
        return logits[0, input_ids.shape[1] - n_logits:].float().numpy() if n_logits else None

    def _decode(self, rows: list[int], tokens: np.ndarray) -> np.ndarray:
        lo, mask, positions, past = self.cache.decode_inputs(rows)
        ids = np.zeros((past.shape[0], 1), np.int64)
        ids[[r - lo for r in rows], 0] = tokens
        logits, new_kv = self._run(ids, mask, positions, past)
        self.cache.store(rows, lo, new_kv)
        return logits[[r - lo for r in rows], 0].float().numpy()
