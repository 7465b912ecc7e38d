"""The memory bandwidth a chip's documentation gives, and decode speed as a share of the bound it sets.

Decoding one token reads every weight and, on the NPU graph, the whole static KV cache once, so a chip
cannot decode faster than bandwidth / (weight bytes + cache bytes) tokens per second. Only chips whose
bandwidth a public document states (or gives the bus of) are listed; for any other chip the report
carries the raw figure (GB/s the decode moved) and no share.
"""
from __future__ import annotations

from dataclasses import dataclass

DK_A2_SPEC = ("https://www.hiascend.com/document/detail/zh/Atlas200IDKA2DeveloperKit/latest/pd/pd_0004.html "
              "(Atlas 200I DK A2 basic specifications: LPDDR4X, 3200 Mbps, 64-bit bus)")


@dataclass(frozen=True)
class Bandwidth:
    gb_s: float          # 10^9 bytes per second
    source: str
    note: str = ""


# The Atlas 200I DK A2 and the Orange Pi AIpro carry the Ascend 310B series chip (npu-smi names it 310B1
# or 310B4 by its compute grade) with LPDDR4X: 3200 MT/s x 8 bytes = 25.6 GB/s. The Orange Pi's own
# sheet gives the memory type, not the bus width: its figure is the DK A2's, to be confirmed on a board.
TABLE: dict[str, Bandwidth] = {
    "Ascend310B1": Bandwidth(25.6, DK_A2_SPEC, "bus width as on the Atlas 200I DK A2"),
    "Ascend310B4": Bandwidth(25.6, DK_A2_SPEC),
}


def lookup(soc: str | None) -> Bandwidth | None:
    return TABLE.get(soc or "")


def decode_bound(soc: str | None, bytes_per_token: int, decode_tok_s: float) -> dict:
    """The report's bandwidth fields: the GB/s the measured decode moved, and, for a listed chip, the
    bound in tokens/s and the measured speed's share of it."""
    moved = decode_tok_s * bytes_per_token / 1e9
    out: dict = {"bytes_per_token": bytes_per_token, "achieved_gb_s": round(moved, 3),
                 "bandwidth_gb_s": None, "bound_tok_s": None, "bandwidth_share": None, "bandwidth_source": None}
    entry = lookup(soc)
    if entry is not None and bytes_per_token > 0:
        bound = entry.gb_s * 1e9 / bytes_per_token
        out.update(bandwidth_gb_s=entry.gb_s, bound_tok_s=round(bound, 2),
                   bandwidth_share=round(decode_tok_s / bound, 4), bandwidth_source=entry.source)
    return out
