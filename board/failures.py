"""What a failed step reports: one line naming the failing pyACL or atc call, its return code and the
runtime's own message (acl.get_recent_err_msg()), so a board user can paste it into a bug report."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from core.errors import UserError

# backends/acl_runtime.check writes "<call> failed with aclError <code>[: <recent error message>]".
ACL_MESSAGE = re.compile(r"(?P<call>acl\.[\w.]+(?: \([^)]*\))?) failed with aclError (?P<code>-?\d+)"
                         r"(?:: (?P<detail>.*))?")
NULL_MESSAGE = re.compile(r"(?P<call>acl\.[\w.]+) failed: it returned NULL(?:: (?P<detail>.*))?")


@dataclass
class Failure:
    """One failed step: `message` is the one line printed; call, code and detail are filled when a pyACL
    call or a command failed."""
    step: str
    message: str
    call: str | None = None
    code: int | None = None
    detail: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class StepError(Exception):
    """A step failed for a reason it could name: a missing tool, a command's exit code, a mismatch."""

    def __init__(self, message: str, call: str | None = None, code: int | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.call, self.code, self.detail = call, code, detail


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe(step: str, error: BaseException) -> Failure:
    """The Failure an exception stands for. AclError and UserError messages are already one line meant for
    users; a pyACL call's name, code and message are parsed out of them for the report's fields."""
    text = one_line(error)
    call = code = detail = None
    match = ACL_MESSAGE.search(text) or NULL_MESSAGE.search(text)
    if match:
        call, detail = match["call"], match["detail"]
        code = int(match["code"]) if "code" in match.groupdict() and match["code"] else None
    if isinstance(error, StepError):
        return Failure(step, text, error.call or call, error.code if error.code is not None else code,
                       error.detail or detail)
    if match or isinstance(error, UserError):
        return Failure(step, text, call, code, detail)
    # Anything else is a bug of ours or an interface that differs from the docs: its type says which.
    return Failure(step, f"{type(error).__name__}: {text}" if text else type(error).__name__)
