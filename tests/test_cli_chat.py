"""cli_chat.py as a user drives it: piped turns, commands, and bad input."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATS = re.compile(r"\[first token [\d.]+s \| decode [\d.]+ tok/s \| total [\d.]+ tok/s \| "
                   r"(\d+) prompt tokens \((\d+) reused\), (\d+) new\]")


def chat(args: list[str], stdin: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli_chat.py"), *args], input=stdin, text=True,
                          capture_output=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model_dir, tiny_onnx_of):
    return tiny_onnx_of(tiny_model_dir, 128)


def test_piped_two_turn_chat_reuses_the_cache(tiny_model_dir, tiny_onnx):
    r = chat(["--hf_model_dir", str(tiny_model_dir), "--onnx_model_path", str(tiny_onnx),
              "--max_output_length", "8", "--max_input_length", "100", "--sampling_method", "greedy"],
             "hello there\nand now a second question\nexit\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Assistant: ") == 2 and "Traceback" not in r.stderr
    turns = [tuple(map(int, m)) for m in STATS.findall(r.stdout)]
    assert len(turns) == 2
    (p1, reused1, _), (p2, reused2, _) = turns
    assert reused1 == 0 and p2 > p1 and reused2 >= p1


def test_clear_starts_over(tiny_model_dir, tiny_onnx):
    r = chat(["--hf_model_dir", str(tiny_model_dir), "--onnx_model_path", str(tiny_onnx),
              "--max_output_length", "4", "--sampling_method", "greedy"], "hi\nclear\nhi\n")
    assert r.returncode == 0 and "(conversation cleared)" in r.stdout
    turns = STATS.findall(r.stdout)
    assert len(turns) == 2 and turns[0][0] == turns[1][0] and turns[1][1] == "0"


@pytest.mark.slow  # several cli_chat.py processes, ~16 s
def test_sampling_with_a_seed_is_repeatable(tiny_model_dir, tiny_onnx):
    args = ["--hf_model_dir", str(tiny_model_dir), "--onnx_model_path", str(tiny_onnx), "--max_output_length", "12",
            "--sampling_method", "top_k", "--sampling_value", "20", "--temperature", "1.5", "--seed", "3"]
    a, b = chat(args, "tell me something\n"), chat(args, "tell me something\n")
    answer = [line for line in a.stdout.splitlines() if line.startswith("Assistant: ")]
    assert a.returncode == 0 and answer == [line for line in b.stdout.splitlines() if line.startswith("Assistant: ")]


@pytest.mark.parametrize("bad,expect", [
    (["--hf_model_dir", "/nonexistent/model"], "no config.json"),
    (["--onnx_model_path", "/nonexistent.onnx"], "no such file"),
    (["--max_prefill_length", "6"], "power of two"),
    (["--kv_cache_length", "256"], "exported with 128"),
    (["--session_type", "onnx", "--onnx_model_path", ""], "needs --onnx_model_path"),
    (["--bogus_flag", "1"], "unrecognized arguments: --bogus_flag"),
    (["--sampling_method", "beam"], "invalid choice: 'beam'"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, tiny_onnx, bad, expect):
    args = {"--hf_model_dir": str(tiny_model_dir), "--onnx_model_path": str(tiny_onnx)}
    for flag, value in zip(bad[::2], bad[1::2]):
        args[flag] = value
    r = chat([x for kv in args.items() for x in kv], "hi\n", timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and expect in lines[0], r.stderr
    assert lines[0].startswith("cli_chat.py: error:")


def test_not_an_onnx_file_is_one_line(tiny_model_dir, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("garbage")
    r = chat(["--hf_model_dir", str(tiny_model_dir), "--onnx_model_path", str(junk)], "hi\n", timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert junk.read_text() == "garbage"
