"""llama.cpp's own server and quantizer for bench/load.py, built once from the llama.cpp sources that
llama-cpp-python's source package on PyPI carries (vendor/llama.cpp), so the peer is the same llama.cpp
that bench.py measures through its Python binding.

    python bench/llama_server.py          # build output/peers/llama.cpp-build/bin/llama-{server,quantize}

Everything goes under output/peers/ (git ignores output/). A binary that exists is not rebuilt; to
rebuild, remove output/peers/llama.cpp-build yourself.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from core.flags import ArgumentParser

REPO = Path(__file__).resolve().parents[1]
VERSION = "0.3.36"  # the llama-cpp-python of bench/requirements-peers.txt
PEERS = REPO / "output/peers"
SOURCE = PEERS / f"src-{VERSION}"
BUILD = PEERS / "llama.cpp-build"
SERVER = BUILD / "bin/llama-server"
QUANTIZE = BUILD / "bin/llama-quantize"
GGUF = REPO / "download/qwen2.5-coder-0.5b-instruct.gguf"
GGUF_Q4_0 = REPO / "output/gguf/qwen2.5-coder-0.5b-instruct-q4_0.gguf"

# No network at build or run time (no curl, no TLS, no web UI fetched from a hub), and only the two tools.
CMAKE_OPTIONS = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
                 "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def fetch_source() -> Path:
    """The sdist's vendor/llama.cpp, downloaded and unpacked once."""
    llama = SOURCE / "vendor/llama.cpp"
    if (llama / "CMakeLists.txt").is_file():
        return llama
    sdist = PEERS / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
             f"llama-cpp-python=={VERSION}", "-d", str(PEERS)])
    with tempfile.TemporaryDirectory(dir=PEERS) as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        shutil.move(str(Path(tmp) / f"llama_cpp_python-{VERSION}"), SOURCE)
    return llama


def ensure_built(jobs: int = 2) -> None:
    """llama-server and llama-quantize, configured and built once."""
    if SERVER.is_file() and QUANTIZE.is_file():
        return
    llama = fetch_source()
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", str(llama), "-B", str(BUILD), *generator, *CMAKE_OPTIONS])
    run(["cmake", "--build", str(BUILD), "--target", "llama-server", "llama-quantize", "-j", str(jobs)])


def ensure_q4_0() -> Path:
    """The default GGUF requantized to Q4_0 by llama.cpp's quantizer, made once. Written under a temporary
    name and renamed, so a run that stops half-way leaves no truncated model behind."""
    if GGUF_Q4_0.is_file():
        return GGUF_Q4_0
    ensure_built()
    GGUF_Q4_0.parent.mkdir(parents=True, exist_ok=True)
    partial = GGUF_Q4_0.with_suffix(".partial")
    run([str(QUANTIZE), "--allow-requantize", str(GGUF), str(partial), "Q4_0", "2"])
    partial.replace(GGUF_Q4_0)
    return GGUF_Q4_0


def main(argv: list[str] | None = None) -> int:
    ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split())).parse_args(argv)  # --help only
    ensure_built()
    ensure_q4_0()
    print(f"{SERVER}\n{GGUF_Q4_0}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
