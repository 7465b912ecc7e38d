"""From an OpenAI request to what Inference takes: template-ready messages, the tools to render,
sampling parameters, and how the answer must be read back (plain, `tools`, or legacy `functions`)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from inference import SamplingParams
from server.errors import APIError
from server.schema import ChatCompletionRequest, ChatMessage, FunctionCallIn
from server.toolcall import react

MAX_STOPS = 4  # OpenAI's own limit; more would only slow the stop-string scan


@dataclass
class Plan:
    messages: list[dict]
    tools: list[dict] | None
    mode: str  # "plain" | "tools" | "functions"
    names: set[str] = field(default_factory=set)
    params: SamplingParams | None = None
    arg_names: dict[str, set[str]] = field(default_factory=dict)  # functions mode: each one's parameters


def _text(msg: ChatMessage, index: int) -> str:
    if msg.content is None:
        return ""
    if isinstance(msg.content, str):
        return msg.content
    parts = []
    for part in msg.content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"messages[{index}]: content part type '{part.type}' is not supported; "
                                "this model reads text only", param=f"messages.{index}.content")
        parts.append(part.text)
    return "\n".join(parts)


def _arguments(call: FunctionCallIn) -> dict | str:
    """Templates render arguments with `tojson`: give them the object, not its JSON text."""
    if isinstance(call.arguments, dict):
        return call.arguments
    try:
        value = json.loads(call.arguments)
    except ValueError:
        return call.arguments
    return value if isinstance(value, dict) else call.arguments


def _tool_messages(msgs: list[ChatMessage]) -> list[dict]:
    out = []
    for i, m in enumerate(msgs):
        role = {"developer": "system", "function": "tool"}.get(m.role, m.role)
        d: dict = {"role": role, "content": _text(m, i)}
        calls = list(m.tool_calls or [])
        if m.function_call is not None:
            calls.append(m.function_call)  # a legacy call in a `tools` conversation is still a call
        if calls:
            fns = [c.function if hasattr(c, "function") else c for c in calls]
            d["tool_calls"] = [{"type": "function", "function": {"name": f.name, "arguments": _arguments(f)}}
                               for f in fns]
        if m.name and role == "tool":
            d["name"] = m.name
        out.append(d)
    return out


def _react_messages(msgs: list[ChatMessage], functions: list[dict]) -> list[dict]:
    out: list[dict] = []
    instructions = react.system_prompt(functions)
    for i, m in enumerate(msgs):
        text = _text(m, i)
        if m.role in ("system", "developer"):
            out.append({"role": "system", "content": text})
        elif m.role == "assistant" and (m.function_call or m.tool_calls):
            f = m.function_call or m.tool_calls[0].function
            args = f.arguments if isinstance(f.arguments, str) else json.dumps(f.arguments, ensure_ascii=False)
            thought = text.strip() or "Thought: I need to call a tool."
            out.append({"role": "assistant", "content": f"{thought}\nAction: {f.name}\nAction Input: {args}"})
        elif m.role in ("function", "tool"):
            # The result goes back as the Observation the ReAct format expects after an Action.
            out.append({"role": "user", "content": f"Observation: {text}"})
        else:
            out.append({"role": m.role, "content": text})
    if out and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + instructions}
    else:
        out.insert(0, {"role": "system", "content": instructions})
    return out


def _tools(req: ChatCompletionRequest) -> list[dict]:
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    choice = req.tool_choice
    if choice == "none":
        return []
    if choice is not None and not isinstance(choice, str):
        tools = [t for t in tools if t["function"]["name"] == choice.function.name]
        if not tools:
            raise APIError(400, f"tool_choice names '{choice.function.name}', which is not in tools",
                           param="tool_choice")
    return tools


def _functions(req: ChatCompletionRequest) -> list[dict]:
    fns = [f.model_dump(exclude_none=True) for f in req.functions or []]
    choice = req.function_call
    if choice == "none":
        return []
    if choice is not None and not isinstance(choice, str):
        fns = [f for f in fns if f["name"] == choice.name]
        if not fns:
            raise APIError(400, f"function_call names '{choice.name}', which is not in functions",
                           param="function_call")
    return fns


def _stops(req: ChatCompletionRequest) -> list[str]:
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"stop: at most {MAX_STOPS} sequences are allowed, got {len(stops)}", param="stop")
    return [s for s in stops if s]


def sampling(req: ChatCompletionRequest, base: SamplingParams, max_output: int) -> SamplingParams:
    """The server's defaults, overridden by what the request sets."""
    limit = req.max_completion_tokens or req.max_tokens
    if limit is not None and limit > max_output:
        which = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
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


def plan(req: ChatCompletionRequest, base: SamplingParams, max_output: int) -> Plan:
    if req.n not in (None, 1):
        raise APIError(400, f"n: this server returns exactly one choice; got n={req.n}", param="n")
    params = sampling(req, base, max_output)
    if req.tools and req.functions:
        raise APIError(400, "send either tools or the legacy functions, not both", param="functions")
    functions = _functions(req)
    if functions:
        params.stop = params.stop + [react.OBSERVATION]
        arg_names = {f["name"]: set((f.get("parameters") or {}).get("properties") or {}) for f in functions}
        return Plan(_react_messages(req.messages, functions), None, "functions",
                    {f["name"] for f in functions}, params, arg_names)
    tools = _tools(req)
    messages = _tool_messages(req.messages)
    if tools:
        return Plan(messages, tools, "tools", {t["function"]["name"] for t in tools}, params)
    return Plan(messages, None, "plain", set(), params)
