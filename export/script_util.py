"""Small pieces shared by the set-up scripts: their one-line error and a file's sha256."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Callable


class ScriptError(Exception):
    """A problem worth one line to the user; `code` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def run_script(prog: str, body: Callable[[], int]) -> int:
    """Run a script's body; an expected failure becomes one line on stderr and its exit status."""
    try:
        return body()
    except ScriptError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.code
    except (OSError, ValueError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"{prog}: error: {first_line}", file=sys.stderr)
        return 1
