"""Emulated `acl.util`: moving bytes between Python objects and emulated pointers."""
from __future__ import annotations

from . import _state as s
from ._state import state

_KEEP = 64  # bytes_to_ptr registrations kept alive; the caller must keep the object alive meanwhile


def bytes_to_ptr(data: bytes) -> int:
    """A pointer to the buffer of a `bytes` object (the only type the docs accept; pyACL raises
    ValueError for others). Read-only: writing into an immutable object is a bug a real pointer
    would hide."""
    if not isinstance(data, bytes):
        raise ValueError(f"acl.util.bytes_to_ptr takes bytes, got {type(data).__name__}")
    st = state()
    view = memoryview(data)
    ptr = st.allocate(len(view), s.HOST, data=view, writable=False)
    st.host_refs.append(ptr)
    while len(st.host_refs) > _KEEP:
        st.release(st.host_refs.pop(0))
    return ptr


def ptr_to_bytes(ptr: int, size: int) -> bytes:
    where = state().locate(ptr, size)
    if where is None:
        raise ValueError(f"ptr_to_bytes: [{ptr:#x}, +{size}) is outside any allocation")
    region, off = where
    return bytes(region.data[off:off + size])
