"""The exit status of a script's main(argv): what it returns, or what argparse exits with."""
from __future__ import annotations

from typing import Callable


def exit_status(main: Callable[[list[str]], int], argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse reports a bad flag this way
        return e.code
