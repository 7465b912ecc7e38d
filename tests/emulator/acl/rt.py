"""Emulated `acl.rt`: devices, contexts and memory, with pyACL's signatures and return conventions
(functions return `ret`, or `(value, ret)`; 0 means success)."""
from __future__ import annotations

import os

from . import _state as s
from ._state import Context, state

_DEVICE_COUNT = 1
_POLICIES = {0, 1, 2, 3, 4, 5}


def _device_limit() -> int:
    return int(os.environ.get("EMU_ACL_DEVICE_MEMORY", str(32 * 1024 ** 3)))


def set_device(device_id: int) -> int:
    st = state()
    if not st.initialised:
        return s.UNINITIALIZE
    if not 0 <= device_id < _DEVICE_COUNT:
        return s.INVALID_PARAM
    st.devices[device_id] = st.devices.get(device_id, 0) + 1
    st.record("set_device", device_id)
    return s.SUCCESS


def reset_device(device_id: int) -> int:
    st = state()
    if st.devices.get(device_id, 0) < 1:
        return s.INVALID_PARAM
    # The documented order is destroy explicit contexts first, then reset the device.
    if any(c.device == device_id for c in st.contexts.values()):
        st.record("reset_device_refused", device_id)
        return s.INVALID_PARAM
    st.devices[device_id] -= 1
    if st.devices[device_id] == 0:
        del st.devices[device_id]
    st.record("reset_device", device_id)
    return s.SUCCESS


def create_context(device_id: int) -> tuple[int, int]:
    st = state()
    if not st.initialised:
        return 0, s.UNINITIALIZE
    if not 0 <= device_id < _DEVICE_COUNT:
        return 0, s.INVALID_PARAM
    handle = next(st.counter)
    st.contexts[handle] = Context(handle, device_id)
    st.local.context = handle
    st.record("create_context", handle)
    return handle, s.SUCCESS


def destroy_context(context: int) -> int:
    st = state()
    if context not in st.contexts:
        return s.INVALID_PARAM
    # Stricter than the chip: memory or models still living in the context mean the caller
    # released things out of order, which on hardware leaves dangling device resources.
    owned = [r for r in st.regions.values() if r.context == context and r.kind != s.HOST]
    models = [m for m in st.handles.values() if getattr(m, "context", None) == context]
    if owned or models:
        st.record("destroy_context_refused", len(owned), len(models))
        return s.INVALID_PARAM
    del st.contexts[context]
    if getattr(st.local, "context", None) == context:
        st.local.context = None
    st.record("destroy_context", context)
    return s.SUCCESS


def set_context(context: int) -> int:
    st = state()
    if context not in st.contexts:
        return s.INVALID_PARAM
    st.local.context = context
    return s.SUCCESS


def get_context() -> tuple[int, int]:
    ctx = state().current_context()
    return (ctx.handle, s.SUCCESS) if ctx else (0, s.CONTEXT_MISSING)


def get_run_mode() -> tuple[int, int]:
    if not state().initialised:
        return 0, s.UNINITIALIZE
    return s.run_mode(), s.SUCCESS


# aclrtMemAttr (pyACL get_mem_info): 0 DDR, 1 HBM, 2 DDR huge, 3 DDR normal, 4 HBM huge, 5 HBM normal,
# 6-9 the reserved peer-to-peer kinds.
_MEM_ATTRS = range(10)


def _has_hbm() -> bool:
    """Training chips (Ascend910*) carry on-chip memory; the inference chips the emulator knows have DDR only."""
    return s.soc_name().startswith("Ascend910")


def get_mem_info(attr: int) -> tuple[int, int, int]:
    """(free, total, ret) of device memory, as the pyACL reference describes it: a device must have been
    set first; a kind of memory the chip lacks reports 0 and 0, except that on chips without HBM the HBM
    kinds are answered as the matching DDR kinds. The emulated device allocates everything from huge
    pages (every malloc policy here), so the normal-page and reserved kinds report 0 and 0."""
    st = state()
    if not st.initialised:
        return 0, 0, s.UNINITIALIZE
    if not st.devices:
        return 0, 0, st.fail(s.INVALID_PARAM, "get_mem_info: no device set (call acl.rt.set_device first)")
    if attr not in _MEM_ATTRS:
        return 0, 0, st.fail(s.INVALID_PARAM, f"get_mem_info: attr {attr} is not an aclrtMemAttr")
    if not _has_hbm():
        attr = {1: 0, 4: 2, 5: 3}.get(attr, attr)  # HBM -> DDR, HBM huge -> DDR huge, HBM normal -> DDR normal
    present = {1, 4} if _has_hbm() else {0, 2}
    if attr not in present:
        return 0, 0, s.SUCCESS
    total = _device_limit()
    used = sum(len(r.data) for r in st.regions.values() if r.kind == s.DEVICE)
    return max(0, total - used), total, s.SUCCESS


def malloc(size: int, policy: int) -> tuple[int, int]:
    st = state()
    ret = s.need_context(st)
    if ret:
        return 0, ret
    if size <= 0 or policy not in _POLICIES:
        return 0, s.INVALID_PARAM
    used = sum(len(r.data) for r in st.regions.values() if r.kind == s.DEVICE)
    if used + size > _device_limit():
        return 0, s.BAD_ALLOC
    ptr = st.allocate(size, s.DEVICE)
    st.record("malloc", size)
    return ptr, s.SUCCESS


def free(dev_ptr: int) -> int:
    return state().free(dev_ptr, s.DEVICE, "free")


def malloc_host(size: int) -> tuple[int, int]:
    st = state()
    if not st.initialised:
        return 0, s.UNINITIALIZE
    if size <= 0:
        return 0, s.INVALID_PARAM
    ptr = st.allocate(size, s.PINNED)
    st.record("malloc_host", size)
    return ptr, s.SUCCESS


def free_host(host_ptr: int) -> int:
    return state().free(host_ptr, s.PINNED, "free_host")


def memcpy(dst: int, dest_max: int, src: int, count: int, kind: int) -> int:
    """`kind` is a reserved parameter per the docs (the runtime judges direction from the
    pointers), so it is recorded but only range-checked; sizes and bounds are always checked."""
    st = state()
    if not st.initialised:
        return s.UNINITIALIZE
    if kind not in (0, 1, 2, 3, 4) or count < 0 or count > dest_max:
        return s.INVALID_PARAM
    to, frm = st.locate(dst, dest_max), st.locate(src, count)
    if to is None or frm is None or not to[0].writable:
        st.record("memcpy_refused", dst, dest_max, src, count)
        return s.INVALID_PARAM
    (dregion, doff), (sregion, soff) = to, frm
    dregion.data[doff:doff + count] = sregion.data[soff:soff + count]
    st.record("memcpy", dregion.kind, sregion.kind, kind, count, doff)
    return s.SUCCESS


def memset(dev_ptr: int, max_count: int, value: int, count: int) -> int:
    st = state()
    if not st.initialised:
        return s.UNINITIALIZE
    where = st.locate(dev_ptr, max_count)
    if where is None or count > max_count or not 0 <= value <= 255 or not where[0].writable:
        return s.INVALID_PARAM
    region, off = where
    region.data[off:off + count] = bytes([value]) * count
    st.record("memset", region.kind, count)
    return s.SUCCESS
