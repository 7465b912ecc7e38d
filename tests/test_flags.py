"""core/flags.py: the kinds of field the scripts declare their flags with, parsed as argparse would."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.flags import ArgumentParser, add_flags, from_args, option


@dataclass
class Kinds:
    paths: list[str] = option(help="required, several")
    operand: str = option(positional=True, help="the one operand")
    counts: list[int] = option([1, 2, 4], help="several, with a default")
    tool: str | None = option(None, choices=("a", "b"), bare="a", help="a value, or bare")
    rounds: int = option(3, help="one value")


def parse(argv: list[str]) -> Kinds:
    p = ArgumentParser(prog="kinds")
    add_flags(p, Kinds)
    return from_args(Kinds, p.parse_args(argv))


def test_defaults_and_a_positional_operand():
    k = parse(["x.onnx", "--paths", "p"])
    assert (k.operand, k.paths, k.counts, k.tool, k.rounds) == ("x.onnx", ["p"], [1, 2, 4], None, 3)


def test_a_list_flag_replaces_its_default_and_a_required_one_may_repeat():
    k = parse(["x", "--paths", "p", "q", "--paths", "r", "--counts", "8"])
    assert k.paths == ["p", "q", "r"] and k.counts == [8]
    assert parse(["x", "--paths", "p", "--counts"]).counts == []
    assert parse(["x", "--paths", "p"]).counts is not parse(["x", "--paths", "p"]).counts


def test_a_bare_flag_means_its_bare_value_and_choices_still_hold(capsys):
    assert parse(["x", "--paths", "p", "--tool"]).tool == "a"
    assert parse(["x", "--tool", "b", "--paths", "p"]).tool == "b"
    with pytest.raises(SystemExit) as e:
        parse(["x", "--paths", "p", "--tool", "c"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_missing_required_list_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["x"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "--paths" in err
