"""Stand-in for CANN's pyACL (`import acl`), for tests on machines without an Ascend NPU.

Tests put tests/emulator on sys.path explicitly; it is never installed. Only the calls the
project uses are implemented, with the documented pyACL signatures and return conventions.
Environment: EMU_ACL_SOC (chip of the emulated board, default Ascend310B1), EMU_ACL_RUN_MODE
(device|host), EMU_ACL_DEVICE_MEMORY (bytes: what malloc may take and get_mem_info reports), EMU_ACL_THREADS
(onnxruntime threads). tests/emulator/npu-smi prints `npu-smi info` for the same board.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import _state as s
from . import mdl, rt, util  # noqa: F401  (the acl.mdl / acl.rt / acl.util namespaces)
from ._buffers import DataBuffer
from ._state import state


def init(config_path: str | None = None) -> int:
    st = state()
    if st.ever_initialised:
        return s.REPEAT_INITIALIZE  # acl.init may be called once per process
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            return 100003
        try:
            json.loads(path.read_text() or "{}")
        except json.JSONDecodeError:
            return s.PARSE_FILE
    st.initialised = st.ever_initialised = True
    st.record("init")
    return s.SUCCESS


def finalize() -> int:
    st = state()
    if not st.initialised:
        return s.UNINITIALIZE
    st.initialised = False
    st.record("finalize", dict(st.live()))
    return s.SUCCESS


def get_soc_name() -> str | None:
    return s.soc_name()


def get_recent_err_msg() -> str | None:
    """The calling thread's latest failure message, cleared by reading it; None when there is none."""
    return state().take_error()


def create_data_buffer(data: int, size: int) -> int:
    """An aclDataBuffer handle, or 0 (NULL) on failure. data 0 means an empty buffer, whose size
    must then be 0."""
    if (data == 0 and size != 0) or size < 0:
        return 0
    return state().new_handle(DataBuffer(data, size))


def destroy_data_buffer(data_buffer: int) -> int:
    return state().destroy(data_buffer, DataBuffer)


def get_data_buffer_addr(data_buffer: int) -> int:
    buf = state().get(data_buffer, DataBuffer)
    return buf.ptr if buf else 0


def get_data_buffer_size_v2(data_buffer: int) -> int:
    buf = state().get(data_buffer, DataBuffer)
    return buf.size if buf else 0
