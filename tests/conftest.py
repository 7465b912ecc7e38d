"""Shared fixtures: tiny random models built on the fly, and the real default model."""
from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tiny_model import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "download" / "Qwen2.5-Coder-0.5B-Instruct"


@pytest.fixture(scope="session")
def make_tiny(tmp_path_factory):
    """`make_tiny(**kwargs)` -> directory of a tiny model; each distinct kwargs is built once."""
    built: dict[tuple, Path] = {}

    def factory(**kwargs) -> Path:
        key = tuple(sorted(kwargs.items()))
        if key not in built:
            name = f"tiny-{kwargs.get('model_type', 'qwen2')}"
            built[key] = make_tiny_model(tmp_path_factory.mktemp("tiny") / name, **kwargs)
        return built[key]

    return factory


@pytest.fixture(scope="session")
def tiny_model_dir(make_tiny) -> Path:
    return make_tiny()


@pytest.fixture(scope="session")
def tiny_onnx_of(tmp_path_factory):
    """`tiny_onnx_of(model_dir, kv_cache_length, dtype="float32")` -> the model exported with
    export_onnx.py; each argument set is exported once per test session and shared read-only."""
    from export.export_onnx import main as export_main

    built: dict[tuple, Path] = {}

    def export(model_dir: Path, kv_cache_length: int, dtype: str = "float32") -> Path:
        key = (str(model_dir), kv_cache_length, dtype)
        if key not in built:
            path = tmp_path_factory.mktemp("tiny_onnx") / f"{Path(model_dir).name}_{dtype}_kv{kv_cache_length}.onnx"
            assert export_main(["--hf_model_dir", str(model_dir), "--onnx_model_path", str(path),
                                "--kv_cache_length", str(kv_cache_length), "--dtype", dtype]) == 0
            built[key] = path
        return built[key]

    return export


# The tiny tokenizer spends ~70 tokens on a one-line chat prompt; 128 slots leave room for an answer.
KV_LEN = 128


@pytest.fixture(scope="session")
def cpu_onnx_of(tmp_path_factory):
    """`cpu_onnx_of(model_dir, kv_cache_length=KV_LEN)` -> the model exported with --target cpu; each
    argument set is exported once per test session and shared read-only."""
    from export.export_onnx import main as export_main

    built: dict[tuple[str, int], Path] = {}

    def export(model_dir: Path, kv_cache_length: int = KV_LEN) -> Path:
        key = (str(model_dir), kv_cache_length)
        if key not in built:
            path = tmp_path_factory.mktemp("cpu_onnx") / f"{Path(model_dir).name}_cpu_kv{kv_cache_length}.onnx"
            assert export_main(["--hf_model_dir", str(model_dir), "--onnx_model_path", str(path),
                                "--kv_cache_length", str(kv_cache_length), "--target", "cpu"]) == 0
            built[key] = path
        return built[key]

    return export


DEFAULT_MODEL_FIXTURE = "default_model_dir"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reaches the default model, through any fixture, is in the default_model group: the
    model exists only after `make model`, and `make test-fast` must pass on a fresh clone without it."""
    for item in items:
        if DEFAULT_MODEL_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.default_model)


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    # A missing model is a broken setup, not a reason to skip: `make test` builds it first.
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{DEFAULT_MODEL_DIR} is missing: run `make model` first")
    return DEFAULT_MODEL_DIR


DEFAULT_KV_CACHE_LENGTH = 256


@pytest.fixture(scope="session")
def default_onnx(default_model_dir, tmp_path_factory) -> dict:
    """The default model exported and patched once per test session (the costly step, ~1 min):
    {"hf_model_dir", "onnx", "patched", "kv_cache_length"}. Every real-model test reuses it."""
    from export.change_node import main as change_main
    from export.export_onnx import main as export_main

    out = tmp_path_factory.mktemp("default_onnx")
    onnx_path, patched = out / "onnx" / "qwen2.5_coder_0.5b.onnx", out / "onnx2" / "qwen2.5_coder_0.5b.onnx"
    assert export_main(["--hf_model_dir", str(default_model_dir), "--onnx_model_path", str(onnx_path),
                        "--kv_cache_length", str(DEFAULT_KV_CACHE_LENGTH), "--dtype", "float32"]) == 0
    assert change_main(["--input_model_path", str(onnx_path), "--output_model_path", str(patched)]) == 0
    return {"hf_model_dir": default_model_dir, "onnx": onnx_path, "patched": patched,
            "kv_cache_length": DEFAULT_KV_CACHE_LENGTH}


@pytest.fixture(scope="session")
def default_cpu_onnx(default_model_dir, tmp_path_factory) -> Path:
    """The real default model exported with --target cpu, once per test session (seconds, ~0.3 GB: the
    exporter streams the weights)."""
    from export.export_onnx import main as export_main

    path = tmp_path_factory.mktemp("default_cpu_onnx") / "qwen2.5_coder_0.5b_cpu.onnx"
    assert export_main(["--hf_model_dir", str(default_model_dir), "--onnx_model_path", str(path),
                        "--kv_cache_length", str(DEFAULT_KV_CACHE_LENGTH), "--target", "cpu"]) == 0
    return path


@pytest.fixture(scope="session")
def default_cpu_int4(default_cpu_onnx) -> Path:
    """Its int4 quantization (~12 s), the draft model `make demo` and `make serve` use."""
    from export.quantize_onnx import main as quantize_main

    path = default_cpu_onnx.parent / "qwen2.5_coder_0.5b_cpu_int4.onnx"
    assert quantize_main(["--input_model_path", str(default_cpu_onnx), "--output_model_path", str(path),
                          "--bits", "4"]) == 0
    return path


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    """The real `openai` client against the module's own `server` fixture."""
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
