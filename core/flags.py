"""Command-line flags declared once, on the dataclass fields they fill.

A field becomes `--name`; its default, type and choices come from the field, its help text from
`metadata["help"]`. A field with `metadata["flag"] = False` is set by code, never by a flag. A
`list[X]` field takes several values (`--name a b`); one without a default may also be repeated. A
field with `bare` may be given without a value, which then means `bare`. A `positional` field is an
argument without a flag name (a script's one operand).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with errors on one line (its usage block buries the actual message)."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def option(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None,
           required: bool = False, flag: bool = True, show_default: bool = True, bare: Any = None,
           positional: bool = False) -> Any:
    """A dataclass field that is also a command-line flag."""
    meta = {"help": help, "choices": choices, "required": required, "flag": flag, "show_default": show_default,
            "bare": bare, "positional": positional}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, list):  # a dataclass field may not share one list between instances
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _base_type(annotation: Any) -> type:
    """int | None -> int, list[int] -> int; the type argparse converts the flag's text with."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    kind = args[0] if args else annotation
    if typing.get_origin(kind) is list:
        return typing.get_args(kind)[0]
    return kind


def _is_list(annotation: Any) -> bool:
    return any(typing.get_origin(a) is list for a in (annotation, *typing.get_args(annotation)))


def add_flags(parser: argparse.ArgumentParser, cls: type, title: str | None = None) -> None:
    """Add one flag per flag-field of the dataclass `cls` (in a titled group when `title` is given)."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)  # the annotations are strings under `from __future__ import annotations`
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("flag", False):
            continue
        kind = _base_type(hints[f.name])
        help_text = meta["help"]
        default = _default(f)
        has_default = default is not dataclasses.MISSING
        if has_default and meta["show_default"] and default is not None and kind is not bool:
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            help_text += f" (default {shown})"
        kwargs: dict[str, Any] = {"help": help_text, "dest": f.name}
        if kind is bool:  # an on-switch: a bool field defaults to off
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = kind
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            if meta.get("bare") is not None:
                kwargs["nargs"], kwargs["const"] = "?", meta["bare"]
            if _is_list(hints[f.name]):
                # "extend" would add to a default list instead of replacing it
                kwargs["nargs"] = "*" if has_default else "+"
                if not has_default:
                    kwargs["action"] = "extend"
            if has_default:
                kwargs["default"] = default
            elif not meta.get("positional"):
                kwargs["required"] = True
        if meta.get("positional"):
            del kwargs["dest"]  # a positional argument's name is its dest
            group.add_argument(f.name, **kwargs)
        else:
            group.add_argument(f"--{f.name}", **kwargs)


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The dataclass `cls` filled from parsed flags (fields without a flag keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if f.metadata.get("flag", False) and hasattr(args, f.name)}
    return cls(**{**values, **overrides})
