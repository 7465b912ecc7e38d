"""Logits of the NPU and of the CPU reference, compared call by call.

Both sessions are fed the same tokens (the CPU's greedy choice at every step), so one near-tie that the
two round differently does not send the conversations apart: every later step is still compared. A step
whose greedy tokens differ counts as a mismatch unless the CPU's two best logits are closer than
`tie_margin`, where float16 rounding alone may swap them (then it is counted as a tie).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Comparison:
    tie_margin: float
    steps: list[dict] = field(default_factory=list)

    def add(self, label: str, ref: np.ndarray, npu: np.ndarray) -> int:
        """Compare one call's logits ([vocab]); returns the reference's greedy token (what both get next)."""
        ref, npu = np.asarray(ref, np.float32), np.asarray(npu, np.float32)
        if ref.shape != npu.shape:
            raise ValueError(f"{label}: logits of shape {npu.shape} on the NPU, {ref.shape} on the CPU")
        top2 = np.partition(ref, -2)[-2:]
        ref_token, npu_token = int(np.argmax(ref)), int(np.argmax(npu))
        gap = float(top2[1] - top2[0])
        diff = float(np.max(np.abs(ref - npu))) if np.all(np.isfinite(npu)) else float("inf")
        verdict = "match" if ref_token == npu_token else "tie" if gap < self.tie_margin else "mismatch"
        self.steps.append({"step": label, "max_abs_diff": round(diff, 6), "cpu_token": ref_token,
                           "npu_token": npu_token, "cpu_top2_gap": round(gap, 6), "verdict": verdict})
        return ref_token

    @property
    def max_abs_diff(self) -> float:
        return max((s["max_abs_diff"] for s in self.steps), default=0.0)

    @property
    def mismatches(self) -> list[dict]:
        return [s for s in self.steps if s["verdict"] == "mismatch"]

    @property
    def tokens_match(self) -> bool:
        return bool(self.steps) and not self.mismatches

    def summary(self) -> dict:
        return {"steps": len(self.steps), "max_abs_diff": self.max_abs_diff, "tokens_match": self.tokens_match,
                "ties": sum(s["verdict"] == "tie" for s in self.steps), "tie_margin": self.tie_margin,
                "mismatches": self.mismatches[:10]}
