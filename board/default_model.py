"""Step 3: the real model (the default one, or --hf_model_dir) on the NPU: exported at float16, compiled for
this chip, a two-turn greedy chat compared token by token with the same graph on onnxruntime, and what
the board makes of it: prefill and decode tokens/s, peak device memory, decode speed against the chip's
memory-bandwidth bound (board/bandwidth.py)."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np

from board import bandwidth, pipeline
from board.compare import Comparison
from board.environment import DEVICE_ID, device_memory
from board.failures import StepError
from core.contract import ModelShape

QUESTIONS = ("Write a python function that checks whether a number is prime.",
             "Now make it faster for large numbers, in a few lines.")
# The default model's logits span tens of units; float16 on the chip moves them by a few tenths, so two
# candidates closer than this may swap without anything being wrong.
TIE_MARGIN = 0.5
GIB = 1024 ** 3


def parameter_count(hf_model_dir: Path) -> int:
    """Parameters in the model's safetensors files, read from their headers only."""
    total = 0
    for path in sorted(Path(hf_model_dir).glob("*.safetensors")):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        total += sum(int(np.prod(t["shape"])) for k, t in header.items() if k != "__metadata__")
    return total


def cache_bytes(shape: ModelShape, kv: int, rows: int = 1) -> int:
    return rows * kv * shape.cache_width * shape.head_dim * 2   # float16


def needed_device_bytes(hf_model_dir: Path, kv: int) -> int:
    """Device memory the model step takes: the .om read into device memory and the model the runtime loads
    from it (both about the float16 weights), the cache as input and its buffers, and some room."""
    shape = ModelShape.from_dir(hf_model_dir)
    weights = parameter_count(hf_model_dir) * 2
    return int((2 * weights + 2 * cache_bytes(shape, kv)) * 1.1)


class Tokenizer:
    def __init__(self, hf_model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(hf_model_dir), local_files_only=True)
        ends = {self.tok.eos_token_id, *(self.tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))}
        self.stops = {t for t in ends if isinstance(t, int) and t >= 0}

    def prompt(self, messages: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


class Chat:
    """Runs the two sessions side by side on the same tokens; times only the NPU's calls."""

    def __init__(self, ref, npu, stops: set[int]) -> None:
        self.ref, self.npu, self.stops = ref, npu, stops
        self.cmp = Comparison(TIE_MARGIN)
        self.fed: list[int] = []
        self.prefill_tokens = self.decode_steps = 0
        self.prefill_s = self.decode_s = 0.0

    def _both(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray, float]:
        arr = np.array([ids], np.int64)
        ref = self.ref.run(arr)
        start = time.perf_counter()
        npu = self.npu.run(arr)
        return ref, npu, time.perf_counter() - start

    def turn(self, name: str, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Prefill what the caches do not hold yet (the second turn reuses the first one's cache), then greedy
        decode; returns the answer's tokens."""
        common = 0
        while common < min(len(prompt), len(self.fed)) and prompt[common] == self.fed[common]:
            common += 1
        common = min(common, len(prompt) - 1)   # at least one token to run
        self.ref.truncate(common)
        self.npu.truncate(common)
        self.fed = self.fed[:common]
        new = prompt[common:]
        ref, npu, took = self._both(new)
        self.prefill_tokens += len(new)
        self.prefill_s += took
        self.fed += new
        token = self.cmp.add(f"{name} prefill {len(new)} tokens ({common} reused)", ref, npu)
        answer = [token]
        while token not in self.stops and len(answer) < max_new_tokens:
            ref, npu, took = self._both([token])
            self.decode_steps += 1
            self.decode_s += took
            self.fed.append(token)
            token = self.cmp.add(f"{name} decode {len(answer)}", ref, npu)
            answer.append(token)
        return answer


def free_memory(acl) -> int | None:
    """Free device memory now, or None where this pyACL cannot tell (then no peak is reported)."""
    if not hasattr(acl.rt, "get_mem_info"):
        return None
    free, total = device_memory(acl)
    return free if total else None


def run(hf_model_dir: Path, soc: str, kv: int, mpl: int, max_new_tokens: int, cpu_thread: int, work: Path,
        logs: Path, verbose: bool) -> dict:
    from backends.acl_runtime import check, runtime
    from config import InferenceConfig
    from session import open_session

    shape = ModelShape.from_dir(hf_model_dir)
    name = Path(hf_model_dir).name.lower().replace("-", "_")
    onnx_path, patched = work / "onnx" / f"{name}.onnx", work / "onnx2" / f"{name}.onnx"
    pipeline.export(hf_model_dir, onnx_path, kv, "float16", logs, verbose)
    pipeline.patch(onnx_path, patched, logs, verbose)
    om = pipeline.compile_om(patched, work / "om" / name, soc, mpl, 1, hf_model_dir, cpu_thread, logs, verbose)

    tokenizer = Tokenizer(hf_model_dir)
    common = dict(kv_cache_length=kv, max_prefill_length=mpl, max_batch=1)
    ref = open_session(InferenceConfig.create(hf_model_dir, session_type="onnx", onnx_model_path=str(patched),
                                              **common))
    acl = runtime()
    check(acl, acl.rt.set_device(DEVICE_ID), "acl.rt.set_device")   # get_mem_info needs a device
    try:
        before = free_memory(acl)
        npu = open_session(InferenceConfig.create(hf_model_dir, session_type="acl", om_model_path=str(om), **common))
        try:
            lowest = free_memory(acl)
            chat = Chat(ref, npu, tokenizer.stops)
            messages = [{"role": "user", "content": QUESTIONS[0]}]
            first = chat.turn("turn 1", tokenizer.prompt(messages), max_new_tokens)
            messages += [{"role": "assistant", "content": tokenizer.decode(first)},
                         {"role": "user", "content": QUESTIONS[1]}]
            second = chat.turn("turn 2", tokenizer.prompt(messages), max_new_tokens)
            after = free_memory(acl)
            lowest = min(lowest, after) if lowest is not None and after is not None else None
        finally:
            npu.close()
    finally:
        check(acl, acl.rt.reset_device(DEVICE_ID), "acl.rt.reset_device")

    if not chat.decode_steps or not chat.decode_s:
        raise StepError("the model stopped before any decode step: nothing to time")
    prefill_tok_s = chat.prefill_tokens / chat.prefill_s if chat.prefill_s else None
    decode_tok_s = chat.decode_steps / chat.decode_s
    weights = sum(p.stat().st_size for p in patched.parent.glob(patched.name + "*.data")) or om.stat().st_size
    result = {
        "hf_model_dir": str(hf_model_dir), "om_model_path": str(om), "om_bytes": om.stat().st_size,
        "kv_cache_length": kv, "max_prefill_length": mpl,
        **{k: v for k, v in chat.cmp.summary().items()},
        "prefill_tokens": chat.prefill_tokens, "decode_steps": chat.decode_steps,
        "prefill_tok_s": round(prefill_tok_s, 2) if prefill_tok_s else None, "decode_tok_s": round(decode_tok_s, 2),
        "peak_device_mem_mb": round((before - lowest) / 1024 ** 2, 1) if before and lowest is not None else None,
        "answers": [tokenizer.decode(first), tokenizer.decode(second)],
        **bandwidth.decode_bound(soc, weights + cache_bytes(shape, kv), decode_tok_s),
    }
    if not chat.cmp.tokens_match:
        bad = chat.cmp.mismatches[0]
        raise ModelMismatch(result, f"greedy tokens differ at {bad['step']}: CPU {bad['cpu_token']}, NPU "
                                    f"{bad['npu_token']} (the CPU's top two differ by {bad['cpu_top2_gap']:.3g}, "
                                    f"logits by up to {bad['max_abs_diff']:.3g})")
    return result


class ModelMismatch(StepError):
    def __init__(self, result: dict, message: str) -> None:
        super().__init__(message)
        self.result = result
