"""aclDataBuffer: a (pointer, size) pair the caller owns; destroying it never frees the memory."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataBuffer:
    ptr: int
    size: int
