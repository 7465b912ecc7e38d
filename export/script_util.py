"""Small pieces shared by the set-up scripts: their one-line error and a file's sha256."""
from __future__ import annotations

import hashlib
from pathlib import Path


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
