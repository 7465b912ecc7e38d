"""The pyACL runtime of this process: the documented enum values we pass, the error type, and `acl`
initialised once (acl.init may run only once per process) and finalised at exit."""
from __future__ import annotations

import atexit

import numpy as np

from core.errors import UserError

# Values from the pyACL reference: aclrtMemcpyKind, aclrtMemMallocPolicy, aclrtRunMode, aclDataType.
HOST_TO_HOST, HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE = 0, 1, 2, 3
MALLOC_HUGE_FIRST = 0
RUN_MODE_DEVICE = 0
ACL_DTYPES = {0: np.float32, 1: np.float16}


class AclError(UserError):
    """A pyACL call failed; the message names the call and its aclError code. The cause lies on the board
    (driver, device, a model built for another chip), so it is reported in one line, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=1)


_RUNTIME: dict[str, object] = {}


def runtime():
    """`acl`, initialised once per process and finalised at exit, after every session has closed
    (atexit runs in reverse registration order)."""
    if "acl" not in _RUNTIME:
        import acl

        check(acl, acl.init(), "acl.init")
        _RUNTIME["acl"] = acl
        atexit.register(acl.finalize)
    return _RUNTIME["acl"]


def check(acl, ret: int, call: str) -> None:
    if ret != 0:
        detail = getattr(acl, "get_recent_err_msg", lambda: "")() or ""
        raise AclError(f"{call} failed with aclError {ret}" + (f": {detail.strip()}" if detail else ""))
