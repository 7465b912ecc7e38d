"""One way to report a user's mistake: raise UserError; the script's entry point prints one line and exits."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (a path, a flag, a model that does not fit). Its message is one line;
    `code` is the exit status the script ends with."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a script's body. A UserError becomes `prog: error: message` on stderr and its exit status;
    any other exception is a bug and keeps its traceback."""
    try:
        return body()
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.code
