"""From an OpenAI request to what Inference takes: the mode that reads the answer (plain, `tools`, or
legacy `functions`), the template-ready messages and tools it prompts with, and the sampling parameters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.constraint import ANY_OBJECT, GrammarError, Grammars, json_grammar, tool_grammar
from inference import SamplingParams
from server.errors import APIError
from server.modes import Functions, Mode, Plain, Tools
from server.schema import ChatCompletionRequest, CompletionRequest, FunctionDef, FunctionName, NamedToolChoice, ToolDef

MAX_STOPS = 4  # OpenAI's own limit; more would only slow the stop-string scan


@dataclass
class Plan:
    messages: list[dict]
    mode: Mode
    params: SamplingParams


def _offered(defs: Sequence[ToolDef | FunctionDef], choice: str | NamedToolChoice | FunctionName | None,
             field: str, choice_field: str) -> list[dict]:
    """The tools (or legacy functions) the model may call under tool_choice (or function_call): none,
    all of them, or the one it names."""
    if choice == "none":
        return []
    if choice is not None and not isinstance(choice, str):
        defs = [d for d in defs if d.name == choice.name]
        if not defs:
            raise APIError(400, f"{choice_field} names '{choice.name}', which is not in {field}", param=choice_field)
    return [d.model_dump(exclude_none=True) for d in defs]


def _mode(req: ChatCompletionRequest) -> Mode:
    if req.tools and req.functions:
        raise APIError(400, "send either tools or the legacy functions, not both", param="functions")
    functions = _offered(req.functions or [], req.function_call, "functions", "function_call")
    if functions:
        return Functions(functions)
    tools = _offered(req.tools or [], req.tool_choice, "tools", "tool_choice")
    return Tools(tools) if tools else Plain()


def _stops(req: ChatCompletionRequest) -> list[str]:
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"stop: at most {MAX_STOPS} sequences are allowed, got {len(stops)}", param="stop")
    return [s for s in stops if s]


def sampling(req: ChatCompletionRequest | CompletionRequest, base: SamplingParams, max_output: int) -> SamplingParams:
    """The server's defaults, overridden by what the request sets."""
    limit = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if limit is not None and limit > max_output:
        which = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        raise APIError(400, f"{which} is too large: {limit}. This server answers with at most {max_output} "
                            "tokens (--max_output_length).", param=which)
    method, value, temperature = base.method, base.value, base.temperature
    if req.temperature is not None:
        temperature = req.temperature
    if req.top_p is not None:
        method, value = "top_p", req.top_p
    if temperature == 0 or (method == "top_p" and value == 0):
        method = "greedy"
    # numpy seeds must be non-negative; folding keeps every distinct small seed distinct
    seed = base.seed if req.seed is None else req.seed % 2**64
    return SamplingParams(max_new_tokens=limit or max_output, method=method, value=value,
                          temperature=temperature, seed=seed, stop=_stops(req))


def _answer_schema(req: ChatCompletionRequest) -> dict | None:
    """The JSON schema response_format asks the answer to follow; None for free text."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ANY_OBJECT
    if fmt.json_schema is None:
        raise APIError(400, "response_format: type 'json_schema' needs a 'json_schema' object "
                            "({name, schema, strict})", param="response_format")
    return fmt.json_schema.json_schema if fmt.json_schema.json_schema is not None else ANY_OBJECT


def grammar(req: ChatCompletionRequest, mode: Mode, tags_are_tokens: bool = True) -> str | None:
    """The grammar the answer must follow (engine/constraint.py), None when it is free; a schema the engine
    cannot compile is a 400 naming it."""
    answer = _answer_schema(req)
    forced = req.tool_choice == "required" or isinstance(req.tool_choice, NamedToolChoice)
    if forced and not req.tools:
        raise APIError(400, "tool_choice: a call can only be required when 'tools' offers some", param="tool_choice")
    if isinstance(mode, Functions):
        if answer is not None:
            raise APIError(400, "response_format cannot be combined with the legacy 'functions'; send 'tools'",
                           param="response_format")
        return None
    try:
        if isinstance(mode, Tools):
            return tool_grammar(mode.tools, forced, None if forced else answer, tags_are_tokens=tags_are_tokens)
        return None if answer is None else json_grammar(answer, "response_format.json_schema.schema")
    except GrammarError as e:
        param = "response_format" if str(e).startswith("response_format") else "tools"
        raise APIError(400, str(e), code="invalid_schema", param=param) from None


def plan(req: ChatCompletionRequest, base: SamplingParams, max_output: int, grammars: Grammars | None = None) -> Plan:
    """grammars: the model's, to constrain answers with; without it a request that needs a constraint is refused."""
    params = sampling(req, base, max_output)
    mode = _mode(req)
    params.stop = params.stop + list(mode.stops)
    constraint = grammar(req, mode, grammars.tags_are_tokens if grammars else True)
    if constraint is not None:
        if grammars is None:
            raise APIError(400, "this server cannot constrain answers (no grammar engine)", param="response_format")
        params.processors = params.processors + [grammars.constraint(constraint)]
    return Plan(mode.messages(req.messages), mode, params)
