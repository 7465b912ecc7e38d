"""Constrained decoding: a grammar (llguidance) masks the logits on the host, so that a request's answer
can only be text the grammar accepts: JSON valid against a schema, or a tool call in Qwen's
<tool_call>{json}</tool_call> format with arguments valid against the tool's parameters.

The mask is applied to each request's float32 logits [vocab] after the graph call, like any other
LogitsProcessor, so it works for every session (the NPU's logits come back to the host every step) and
with batching (each request owns its matcher). Grammars are written and checked here without the model's
tokenizer, so a request with a schema the engine cannot compile is refused before it runs; the tokenizer
(about 3 s to index the default model's 151k tokens) is built once, on the first constrained request.
"""
from __future__ import annotations

import json
import re
import threading
from functools import cached_property
from typing import Sequence

import llguidance
import llguidance.numpy
import numpy as np

from engine.sampling import LogitsProcessor

# One form of JSON whitespace: with free whitespace a weak model can fill its budget with blank lines.
JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
MAX_CALLS = 4  # calls in one answer when a call is required
ANY_OBJECT: dict = {"type": "object"}


class GrammarError(ValueError):
    """A schema or grammar the engine cannot compile; the message says why."""


class ConstraintError(RuntimeError):
    """A request's grammar cannot go on (its matcher hit an error or a resource limit): the request ends."""


def _one_line(problem: str) -> str:
    """llguidance's message on one line, without the grammar excerpt it may quote (lines "  1 | ...")."""
    lines = []
    for line in problem.strip().splitlines():
        if re.match(r"\s*\d+ \|", line):
            break
        if line.strip() and set(line.strip()) != {"^"}:
            lines.append(line.strip())
    return " ".join(lines)


def _check(grammar: str, what: str) -> str:
    problem = llguidance.LLMatcher.validate_grammar(grammar, None)
    if problem:
        raise GrammarError(f"{what} cannot be used as a constraint: {_one_line(problem)}")
    return grammar


def _json_grammar(schema: dict, what: str) -> str:
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_FORMAT)
    except (ValueError, TypeError) as e:
        raise GrammarError(f"{what} cannot be used as a constraint: {e}") from None
    return _check(grammar, what)


def json_grammar(schema: dict | None, what: str = "the schema") -> str:
    """A grammar for JSON valid against schema; None: any JSON object. GrammarError names what is wrong."""
    return _json_grammar(ANY_OBJECT if schema is None else schema, what)


def gbnf_grammar(text: str, what: str = "grammar") -> str:
    """A grammar from llama.cpp's GBNF, converted by llguidance; GrammarError when it does not convert cleanly."""
    from llguidance.gbnf_to_lark import gbnf_to_lark

    try:
        lark = gbnf_to_lark(text)
    except Exception as e:  # the converter raises its own error type, and plain Exceptions for some mistakes
        raise GrammarError(f"{what} is not GBNF llguidance can convert: {_one_line(str(e))}") from None
    try:
        grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    except (ValueError, TypeError) as e:
        raise GrammarError(f"{what} cannot be used as a constraint: {e}") from None
    return _check(grammar, what)


def declared_arguments(parameters: dict | None) -> set[str] | None:
    """The argument names a function's parameters allow, None when they allow others too. Parameters
    that do not say what other keys may be allow none: a small model otherwise pads a call with keys
    copied from the schema itself."""
    open_keys = ("additionalProperties", "patternProperties", "unevaluatedProperties")
    if not parameters or "properties" not in parameters or any(k in parameters for k in open_keys):
        return None
    return set(parameters["properties"])


def _closed(parameters: dict) -> dict:
    if declared_arguments(parameters) is None:
        return parameters
    return {**parameters, "additionalProperties": False}


def _call_schema(name: str, parameters: dict | None) -> dict:
    """One call as the Qwen template writes it: {"name": ..., "arguments": {...}}, name first."""
    arguments = _closed(parameters) if parameters else ANY_OBJECT
    return {"type": "object", "properties": {"name": {"const": name}, "arguments": arguments},
            "required": ["name", "arguments"], "additionalProperties": False}


def _lark_json(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": JSON_FORMAT})


def tool_grammar(tools: Sequence[dict], required: bool, answer_schema: dict | None = None,
                 what: str = "tools", tags_are_tokens: bool = True, parallel: bool = True) -> str:
    """A grammar for answers to a request offering tools (OpenAI's tools: [{"function": {name, parameters}}]).

    required: the answer is 1 to MAX_CALLS calls to the offered tools and nothing else. Otherwise
    ("auto"): free text (or, with answer_schema, JSON valid against it), and once the model opens a call
    the rest of that call is constrained; the grammar is lazy, so text is never held back.
    parallel: False allows one call at most (exactly one when required), as OpenAI's
    parallel_tool_calls: false does.
    tags_are_tokens: the tokenizer has <tool_call> and </tool_call> as tokens of their own (Qwen2.5 and
    later); otherwise the tags are text the model spells out."""
    calls = []
    for i, tool in enumerate(tools):
        f = tool["function"]
        schema = _call_schema(f["name"], f.get("parameters"))
        _json_grammar(schema, f"{what}[{i}].function.parameters")  # names the tool whose schema is bad
        calls.append(schema)
    call = {"anyOf": calls} if len(calls) > 1 else calls[0]
    tags = (TOOL_OPEN, TOOL_CLOSE) if tags_are_tokens else (json.dumps(TOOL_OPEN), json.dumps(TOOL_CLOSE))
    open_tag, close_tag = tags
    lines = [f'call: {open_tag} "\\n" {_lark_json(call)} "\\n" {close_tag}']
    if required:
        bounded = f'("\\n" call){{0,{MAX_CALLS - 1}}}' if parallel else ""
        lines.insert(0, f"start: call {bounded}")
    elif answer_schema is not None:
        _json_grammar(answer_schema, "response_format.json_schema.schema")
        more = '("\\n" call)*' if parallel else ""
        lines.insert(0, f"start: {_lark_json(answer_schema)} | call {more}")
    else:
        lines.insert(0, "start: TEXT (call TEXT)*" if parallel else "start: TEXT (call TEXT)?")
        lines.append(r"TEXT: /(.|\n)*/")
    return _check(llguidance.LLMatcher.grammar_from_lark("\n".join(lines)), what)


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def after_thinking(grammar: str, starts_inside: bool = False, tags_are_tokens: bool = True) -> str:
    """grammar (from this module) for the answer after the model's thinking: an optional
    <think>...</think> block first (required to close when starts_inside: the prompt opened it), its text
    free, then the blank lines Qwen3 writes, then the answer under grammar. tags_are_tokens: <think> and
    </think> are tokens of their own (Qwen3); otherwise text, and the thinking ends at the first </think>."""
    if tags_are_tokens:
        block = '/(.|\\n)*/ </think>' if starts_inside else '(<think> /(.|\\n)*/ </think>)?'
        lines = [f"start: {block} /\\n*/ @answer"]
    else:  # one lexeme up to the first </think>: the lexer would not end a free-text one before the tag
        opening = "" if starts_inside else "<think>"
        lines = [f"start: THOUGHT{'' if starts_inside else '?'} /\\n*/ @answer",
                 f"THOUGHT: /{opening}(.|\\n)*<\\/think>/ & ~/{opening}(.|\\n)*<\\/think>(.|\\n)+/"]
    answer = json.loads(grammar)["grammars"] if grammar.lstrip().startswith("{") else [{"lark_grammar": grammar}]
    answer[0] = {**answer[0], "name": "answer"}
    return _check(json.dumps({"grammars": [{"name": "thinking", "lark_grammar": "\n".join(lines)}, *answer]}),
                  "the grammar after the thinking")


class Grammars:
    """The model's tokenizer as llguidance sees it, built once (on first use, thread-safe), and the
    constraints made from it."""

    def __init__(self, hf_tokenizer, eos_token_ids: Sequence[int]) -> None:
        self.hf_tokenizer = hf_tokenizer
        self.eos_token_ids = sorted(eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    @cached_property
    def tags_are_tokens(self) -> bool:
        """Whether the tool-call tags are tokens of their own in this tokenizer (None: assume so)."""
        if self.hf_tokenizer is None:
            return True
        vocab = self.hf_tokenizer.get_vocab()
        return TOOL_OPEN in vocab and TOOL_CLOSE in vocab

    @cached_property
    def think_tags_are_tokens(self) -> bool:
        """Whether <think> and </think> are tokens of their own in this tokenizer (Qwen3's are)."""
        if self.hf_tokenizer is None:
            return True
        vocab = self.hf_tokenizer.get_vocab()
        return THINK_OPEN in vocab and THINK_CLOSE in vocab

    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf
                self._tokenizer = llguidance.hf.from_tokenizer(self.hf_tokenizer, n_vocab=len(self.hf_tokenizer),
                                                               eos_token=self.eos_token_ids)
            return self._tokenizer

    def warm(self) -> None:
        """Build the tokenizer in the background now, so that the first constrained request does not wait."""
        threading.Thread(target=self.tokenizer, name="grammar-tokenizer", daemon=True).start()

    def constraint(self, grammar: str) -> "GrammarConstraint":
        """A fresh constraint for one request; its matcher is made on first use, on the model's thread."""
        return GrammarConstraint(self, grammar)

    def checked_constraint(self, grammar: str) -> "GrammarConstraint":
        """A constraint whose matcher is made and whose first mask is computed now, on the caller's thread,
        so that a grammar that compiles but cannot run (a schema that only refers to itself, a parse
        beyond llguidance's limits) is refused before the request reaches the engine: ConstraintError."""
        constraint = GrammarConstraint(self, grammar)
        constraint.allowed(self.tokenizer().vocab_size)
        return constraint


class GrammarConstraint(LogitsProcessor):
    """Sets every token the grammar does not allow next to -inf. When the grammar is complete only the
    end-of-sequence tokens remain, so the answer ends there."""

    speculative = True  # the mask depends only on the tokens accepted so far

    def __init__(self, grammars: Grammars, grammar: str) -> None:
        self.grammars, self.grammar = grammars, grammar
        self.matcher: llguidance.LLMatcher | None = None
        self._bits: np.ndarray | None = None  # the matcher's mask, one bit per token, reused every step

    def _matcher(self) -> llguidance.LLMatcher:
        if self.matcher is None:
            # llguidance's default parser limits bound the work of compiling and of each mask (its "fuel");
            # going past them puts the matcher in its error state, which fails this request alone.
            self.matcher = llguidance.LLMatcher(self.grammars.tokenizer(), self.grammar, log_level=0)
            self._raise_if_error()
        return self.matcher

    def _raise_if_error(self) -> None:
        if self.matcher.is_error():
            raise ConstraintError(_one_line(self.matcher.get_error()) or "the grammar's matcher failed")

    def allowed(self, size: int) -> np.ndarray:
        """bool [size]: the tokens the grammar allows next."""
        matcher = self._matcher()
        if self._bits is None:
            self._bits = llguidance.numpy.allocate_token_bitmask(1, self.grammars.tokenizer().vocab_size)
        llguidance.numpy.fill_next_token_bitmask(matcher, self._bits)
        self._raise_if_error()
        bits = self._bits.view(np.uint8)
        allowed = np.unpackbits(bits, bitorder="little", count=min(size, 8 * bits.size)).view(bool)
        if allowed.size < size:  # logits wider than the tokenizer's vocabulary: padding rows, never allowed
            allowed = np.concatenate([allowed, np.zeros(size - allowed.size, bool)])
        return allowed

    def process(self, logits: np.ndarray, generated: Sequence[int]) -> np.ndarray:
        return np.where(self.allowed(logits.shape[-1]), logits, np.float32(-np.inf))

    def accept(self, token: int) -> None:
        self._matcher().consume_token(token)
        self._raise_if_error()

    def fork(self) -> "GrammarConstraint":
        """Another choice's constraint: the same grammar from its start (choices fork before any token), and
        the shared tokenizer, which a deep copy would duplicate. A matcher already made is copied, not
        compiled again."""
        other = GrammarConstraint(self.grammars, self.grammar)
        if self.matcher is not None:
            other.matcher = self.matcher.deep_copy()
        return other
