"""The layout's promises: no import cycle, the runtime free of export/ and bench/, one way to find the
project's modules, every README command runs as written, the fast test loop's groups, and opening a session
reads each model file's metadata once."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"tests", ".venv", "download", "output", "build", ".git"}


def project_files() -> dict[str, Path]:
    """Module name -> file, for every non-test Python file of the project."""
    files = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or rel.parts[0].startswith("."):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Project modules a file imports, at module level or inside functions alike."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_no_import_cycle_in_the_project():
    files = project_files()
    assert {"session", "config", "inference", "core.contract", "backends.base"} <= set(files)
    graph = {m: imports_of(p, set(files)) - {m} for m, p in files.items()}
    # A package's __init__ importing its own submodules is not a cycle between jobs.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep] if dep in stack else [m, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


RUNTIME_PACKAGES = ("backends", "engine", "server", "deploy", "core")
RUNTIME_MODULES = ("inference", "session", "kvcache", "config", "api", "cli_chat")
OFFLINE_PACKAGES = ("export", "bench")


def reached_from(module: str, graph: dict[str, set[str]]) -> set[str]:
    """Every project module `module` imports, directly or through others (lazy imports included)."""
    seen, todo = set(), [module]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_the_runtime_imports_neither_export_nor_bench():
    """What serves a model never needs the exporters or the benchmarks (they may import the runtime)."""
    files = project_files()
    graph = {m: imports_of(p, set(files)) - {m} for m, p in files.items()}
    runtime = sorted(m for m in files if m in RUNTIME_MODULES or m.split(".")[0] in RUNTIME_PACKAGES)
    assert set(RUNTIME_MODULES) | {"backends.torch_reference", "backends.kv_cache", "core.contract"} <= set(runtime)

    def offline(mods: set[str]) -> set[str]:
        return {m for m in mods if m.split(".")[0] in OFFLINE_PACKAGES}

    assert offline(reached_from("export.change_node", graph)), "the check must see an import of export/"
    leaks = {m: sorted(offline(reached_from(m, graph))) for m in runtime}
    leaks = {m: found for m, found in leaks.items() if found}
    assert not leaks, f"runtime modules that import export/ or bench/: {leaks}"


def test_bench_keeps_the_product_benchmark_and_records_decisions_in_experiments():
    bench = ROOT / "bench"
    assert not (bench / "turn2_latency.py").exists()
    assert {"bench.py", "quality.py", "load.py"} <= {p.name for p in bench.glob("*.py")}
    readme = (bench / "experiments/README.md").read_text()
    for record in sorted((bench / "experiments").glob("*.py")):
        assert f"python bench/experiments/{record.name}" in readme, f"{record.name} has no line in the README"


def test_the_fast_loop_leaves_out_every_registered_group():
    import configparser

    ini = configparser.ConfigParser()
    ini.read(ROOT / "pytest.ini")
    groups = {line.split(":")[0].strip() for line in ini["pytest"]["markers"].strip().splitlines()}
    assert {"browser", "ray", "default_model", "emulator", "slow"} <= groups
    assert "--strict-markers" in ini["pytest"]["addopts"].split()
    target = re.search(r"^test-fast:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert target, "the Makefile has no test-fast target"
    assert all(f"not {g}" in target.group(1) for g in groups), target.group(1)


def test_test_files_of_one_group_carry_its_marker():
    """A new Chromium, Ray, default-model or emulator test file joins its group, so make test-fast (no
    model download, no Chromium) keeps passing on a fresh clone."""
    tests = ROOT / "tests"
    groups = {"test_web_ui.py": "browser", "test_ray_serve.py": "ray", "test_default_model.py": "default_model",
              "test_api_real.py": "default_model"}
    groups.update({p.name: "emulator" for pattern in ("test_npu_*.py", "test_emulator_*.py")
                   for p in tests.glob(pattern)})
    assert len(groups) > 6
    unmarked = [name for name, group in sorted(groups.items())
                if not re.search(rf"^pytestmark = .*pytest\.mark\.{group}\b", (tests / name).read_text(), re.M)]
    assert not unmarked, f"these files lack their module-level pytestmark: {unmarked}"


def test_no_script_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for p in project_files().values()
                 if re.search(r"sys\.path\.(insert|append)|sys\.path\s*\[", p.read_text())]
    assert not offenders, f"these edit sys.path instead of relying on the editable install: {offenders}"


def test_the_project_is_installed_in_editable_mode():
    """`make setup` installs the project into .venv: its modules import from any directory."""
    out = subprocess.run([sys.executable, "-c", "import config, session, core.contract, backends.qwen_torch, "
                          "export.export_onnx; print(config.__file__)"], cwd="/", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == (ROOT / "config.py").resolve()


def readme_commands() -> list[list[str]]:
    """Every `python[3] <script> ...` command in the README's code blocks."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            m = re.search(r"\bpython3? (\S+\.py)", line)
            if m:
                commands.append(m.group(1))
    return sorted(set(commands))


def test_every_readme_command_answers_help():
    scripts = readme_commands()
    assert {"cli_chat.py", "api.py", "export/export_onnx.py", "export/change_node.py", "export/onnx2om.py",
            "export/quantize_onnx.py"} <= set(scripts)
    for script in scripts:
        assert (ROOT / script).is_file(), f"README names {script}, which does not exist"
        done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{script} --help: {done.stderr[-500:]}"
        assert "usage:" in done.stdout and "--" in done.stdout


def test_flags_are_declared_once_on_the_dataclasses():
    """A default shows in --help from the field that holds it; changing the field changes the flag."""
    import argparse
    import dataclasses

    from config import GenerationOptions, SessionOptions, add_model_args

    p = argparse.ArgumentParser()
    add_model_args(p)
    defaults = {a.dest: a.default for a in p._actions if a.dest != "help"}
    for cls in (SessionOptions, GenerationOptions):
        for name, field in cls.__dataclass_fields__.items():
            if field.metadata.get("flag"):
                assert name in defaults, f"--{name} has no flag"
                if field.default is not dataclasses.MISSING:
                    assert defaults[name] == field.default, name


def test_opening_a_session_reads_each_model_files_metadata_once(tiny_model_dir, tiny_onnx_of, cpu_onnx_of,
                                                                monkeypatch):
    import onnx

    from cli_chat import parse_args
    from core import contract
    from inference import Inference, load_inference

    npu, cpu = tiny_onnx_of(tiny_model_dir, 64), cpu_onnx_of(tiny_model_dir, 64)
    real_load = onnx.load
    reads: list[str] = []

    def counting(path, *args, **kwargs):
        reads.append(str(Path(path).resolve()))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", counting)
    for model, draft in ((npu, None), (cpu, cpu)):
        contract._read_meta.cache_clear()
        reads.clear()
        argv = ["--hf_model_dir", str(tiny_model_dir), "--onnx_model_path", str(model), "--max_prefill_length", "4"]
        if draft:
            argv += ["--draft_onnx_model_path", str(draft)]
        engine = load_inference(parse_args(argv))
        assert isinstance(engine, Inference)
        assert engine.session.run(np.array([[1, 2, 3]])).shape == (engine.config.shape.vocab_size,)
        per_file = {f: reads.count(f) for f in reads}
        assert per_file and max(per_file.values()) == 1, per_file
        assert str(Path(model).resolve()) in per_file
