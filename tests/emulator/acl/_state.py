"""Process state of the emulated runtime: initialisation, devices, contexts, memory and handles.

Memory is an emulated address space: every allocation gets a distinct integer base address and a
bytearray behind it, so pointer arithmetic works as on the chip (base + offset) and every access is
checked against the allocation it falls in. The current context and the recent error message are
per thread, as in CANN. Fresh allocations hold stale bytes (0xFF: NaN as a float, -1 as an integer),
because the docs say malloc/malloc_host do not initialise memory: code that reads before it writes
or forgets a memset fails here too.
"""
from __future__ import annotations

import bisect
import itertools
import mmap
import os
import tempfile
import threading
from dataclasses import dataclass, field

# aclError values from the aclError reference.
SUCCESS = 0
INVALID_PARAM = 100000
UNINITIALIZE = 100001
REPEAT_INITIALIZE = 100002
PARSE_FILE = 100006
BAD_ALLOC = 200000
CONTEXT_MISSING = 107002  # emulator's code for "no current context in this thread"

DEVICE, HOST, PINNED = "device", "host-bytes", "host-pinned"
_BASES = {DEVICE: 0x1000_0000_0000, PINNED: 0x2000_0000_0000, HOST: 0x3000_0000_0000}
_GAP = 4096  # keeps allocations apart so an overrun never lands in a neighbour
STALE = 0xFF
# Allocations this large (a whole .om) live in a temporary file mapped into memory rather than in
# anonymous RAM: the kernel can write them out, so a 2 GB model does not hold 2 GB of the test machine.
_FILE_BACKED = 64 * 1024 * 1024


@dataclass
class Region:
    base: int
    data: bytearray | memoryview | mmap.mmap
    kind: str
    context: int | None = None
    writable: bool = True


@dataclass
class Context:
    handle: int
    device: int


@dataclass
class State:
    initialised: bool = False
    ever_initialised: bool = False
    devices: dict[int, int] = field(default_factory=dict)   # device id -> set_device refcount
    contexts: dict[int, Context] = field(default_factory=dict)
    regions: dict[int, Region] = field(default_factory=dict)
    bases: list[int] = field(default_factory=list)
    next_base: dict[str, int] = field(default_factory=lambda: dict(_BASES))
    handles: dict[int, object] = field(default_factory=dict)
    host_refs: list[int] = field(default_factory=list)      # bytes_to_ptr regions, oldest first
    trace: list[tuple] = field(default_factory=list)
    local: threading.local = field(default_factory=threading.local)
    counter: itertools.count = field(default_factory=lambda: itertools.count(0x5000_0000))

    # ---- contexts -------------------------------------------------------------------------
    def current_context(self) -> Context | None:
        handle = getattr(self.local, "context", None)
        return self.contexts.get(handle) if handle is not None else None

    # ---- memory -----------------------------------------------------------------------------
    def allocate(self, size: int, kind: str, data: bytearray | memoryview | None = None,
                 writable: bool = True) -> int:
        base = self.next_base[kind]
        self.next_base[kind] = base + ((size + _GAP - 1) // _GAP + 1) * _GAP
        ctx = self.current_context()
        region = Region(base, data if data is not None else _fresh(size), kind, ctx.handle if ctx else None,
                        writable)
        self.regions[base] = region
        bisect.insort(self.bases, base)
        return base

    def release(self, base: int) -> Region | None:
        region = self.regions.pop(base, None)
        if region is not None:
            self.bases.remove(base)
        return region

    def free(self, base: int, kind: str, call: str) -> int:
        """What every free call does: only an allocation of its own kind may be released."""
        region = self.regions.get(base)
        if region is None or region.kind != kind:
            return INVALID_PARAM
        self.release(base)
        self.record(call, len(region.data))
        return SUCCESS

    def locate(self, ptr: int, count: int) -> tuple[Region, int] | None:
        """The region holding [ptr, ptr+count) and the offset of ptr in it; None if out of bounds."""
        i = bisect.bisect_right(self.bases, ptr) - 1
        if i < 0 or count < 0:
            return None
        region = self.regions[self.bases[i]]
        offset = ptr - region.base
        if offset + count > len(region.data):
            return None
        return region, offset

    # ---- opaque handles -------------------------------------------------------------------
    def new_handle(self, obj: object) -> int:
        handle = next(self.counter)
        self.handles[handle] = obj
        return handle

    def get(self, handle: int, kind: type):
        obj = self.handles.get(handle)
        return obj if isinstance(obj, kind) else None

    def destroy(self, handle: int, kind: type, call: str | None = None) -> int:
        """What every destroy call does: only a live handle of its own type may be destroyed."""
        if self.get(handle, kind) is None:
            return INVALID_PARAM
        del self.handles[handle]
        if call:
            self.record(call, handle)
        return SUCCESS

    def live(self) -> dict[str, int]:
        """What is still allocated: tests assert this is empty after a session closes."""
        kinds: dict[str, int] = {}
        for r in self.regions.values():
            if r.kind != HOST:
                kinds[r.kind] = kinds.get(r.kind, 0) + 1
        for obj in self.handles.values():
            name = type(obj).__name__
            kinds[name] = kinds.get(name, 0) + 1
        if self.contexts:
            kinds["context"] = len(self.contexts)
        if self.devices:
            kinds["device"] = sum(self.devices.values())
        return kinds

    def record(self, *event) -> None:
        self.trace.append(event)

    # ---- error messages (per thread, read-and-clear like aclGetRecentErrMsg) ---------------------
    def fail(self, code: int, message: str) -> int:
        self.local.error = message
        self.record("error", message)
        return code

    def take_error(self) -> str | None:
        message = getattr(self.local, "error", None)
        self.local.error = None
        return message


def _fresh(size: int) -> bytearray | mmap.mmap:
    """size stale bytes, in RAM or, when large, in a mapped temporary file."""
    if size < _FILE_BACKED:
        return bytearray([STALE]) * size
    with tempfile.TemporaryFile(prefix="emu_acl_") as f:
        f.truncate(size)
        data = mmap.mmap(f.fileno(), size)   # the mapping keeps the (already unlinked) file alive
    chunk = bytes([STALE]) * min(size, 16 * 1024 * 1024)
    for at in range(0, size, len(chunk)):
        n = min(len(chunk), size - at)
        data[at:at + n] = chunk[:n]
    return data


_STATE: State | None = None
_LOCK = threading.Lock()


def state() -> State:
    global _STATE
    with _LOCK:
        if _STATE is None:
            _STATE = State()
        return _STATE


def soc_name() -> str:
    """The chip this emulated board pretends to be (EMU_ACL_SOC, default Ascend310B1)."""
    return os.environ.get("EMU_ACL_SOC", "Ascend310B1")


def run_mode() -> int:
    """0 = ACL_DEVICE (the app runs on the board, like a 310B1 dev kit), 1 = ACL_HOST (EMU_ACL_RUN_MODE=host)."""
    return 1 if os.environ.get("EMU_ACL_RUN_MODE", "device") == "host" else 0


def need_context(st: State) -> int:
    if not st.initialised:
        return UNINITIALIZE
    return SUCCESS if st.current_context() is not None else CONTEXT_MISSING
