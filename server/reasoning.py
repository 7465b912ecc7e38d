"""A model's thinking: whether a request thinks, and the thinking split from the answer. Qwen3 (and any
template that uses `<think>`) writes its reasoning as `<think>...</think>` before the answer; a template may
also open the `<think>` itself at the end of the prompt, so that the answer starts inside the thinking and only
`</think>` shows. The splitter reads the text as it streams and hands out each piece as thinking or answer; a
piece that may be the start of a tag waits. thinking_for decides, per request, what the chat template is given
and whether its answer is split: every door (and cli_chat.py) asks it."""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, NamedTuple

from server.errors import APIError

if TYPE_CHECKING:  # types only: the terminal chat uses this module without the server's machinery
    from inference import Inference
    from server.serving import Context

OPEN, CLOSE = "<think>", "</think>"


class ThinkingSplitter:
    """starts_inside: the prompt ended inside a `<think>` the template opened."""

    def __init__(self, starts_inside: bool = False) -> None:
        self.state = "thinking" if starts_inside else "start"  # start -> thinking -> answer, or start -> answer
        self.held = ""
        self.trim = starts_inside  # right after a tag: the newlines Qwen3 writes around its tags are not text

    def feed(self, piece: str) -> list[tuple[str, str]]:
        """The new pieces as (kind, text), kind "thinking" or "answer"."""
        text, out = self.held + piece, []
        self.held = ""
        while text:
            if self.trim:  # the tag and the text after it may come as separate pieces
                text = text.lstrip("\n")
                self.trim = not text
                continue
            if self.state == "start":
                stripped = text.lstrip()
                if stripped.startswith(OPEN):
                    self.state, self.trim, text = "thinking", True, stripped[len(OPEN):]
                elif OPEN.startswith(stripped):  # may still become the opening tag
                    self.held = text
                    return out
                else:
                    self.state = "answer"
            elif self.state == "thinking":
                at = text.find(CLOSE)
                if at >= 0:
                    out.append(("thinking", text[:at].rstrip("\n")))
                    self.state, self.trim, text = "answer", True, text[at + len(CLOSE):]
                    continue
                hold = max((n for n in range(1, len(CLOSE)) if text.endswith(CLOSE[:n])), default=0)
                body = text[:len(text) - hold]
                shown = body.rstrip("\n")  # newlines wait: they may be the ones before </think>
                out.append(("thinking", shown))
                self.held = text[len(shown):]
                return [(k, t) for k, t in out if t]
            else:
                out.append(("answer", text))
                text = ""
        return [(k, t) for k, t in out if t]

    def finish(self) -> list[tuple[str, str]]:
        """What was held back, as what it turned out to be."""
        held, self.held = self.held, ""
        if not held:
            return []
        return [("thinking" if self.state == "thinking" else "answer", held)]


# OpenAI's reasoning efforts (its ReasoningEffort schema) as the template's thinking switch, which has only
# off and on.
EFFORT_THINKS = {"none": False, "minimal": False, "low": True, "medium": True, "high": True, "xhigh": True,
                 "max": True}
SWITCH = "enable_thinking"  # Qwen3's variable: false makes the generation prompt close an empty <think></think>
PROBE = [{"role": "user", "content": "?"}]


class Thinking(NamedTuple):
    """How one request's prompt is rendered and its answer read. template_kwargs: what the chat template is
    given ({"enable_thinking": bool} or nothing); thinks: the model may open its answer with
    <think>...</think> (so the reader splits it off and a grammar lets it through first); starts_inside: the
    rendered prompt already opened the <think>, so the answer starts in the thinking."""
    template_kwargs: dict
    thinks: bool
    starts_inside: bool


def template_text(inference: Inference) -> str:
    """The tokenizer's chat template source ('' without one); a tokenizer with several named templates
    counts them all."""
    template = getattr(inference.tokenizer, "chat_template", None) or ""
    return "\n".join(template.values()) if isinstance(template, dict) else template


def has_switch(inference: Inference) -> bool:
    """Whether the chat template reads Qwen3's thinking switch."""
    return SWITCH in template_text(inference)


def render_arguments(inference: Inference) -> set[str]:
    """The names the template renderer takes for itself (messages, tools, tokenize, ...), which a request's
    template variables may not reuse."""
    parameters = inspect.signature(inference.tokenizer.apply_chat_template).parameters.values()
    return {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _generation_prompt(inference: Inference, template_kwargs: dict) -> str:
    """What the template adds after a one-message conversation to make the model answer."""
    bare = inference.chat_text(PROBE, template_kwargs=template_kwargs, add_generation_prompt=False)
    full = inference.chat_text(PROBE, template_kwargs=template_kwargs)
    return full[len(bare):] if full.startswith(bare) else full


def thinking_for(ctx: Context, enable: bool | None, param: str, template_kwargs: dict | None = None) -> Thinking:
    """The thinking of a request that asks to turn it on (True), off (False) or leaves it to the template
    (None). A request that asks either way on a template without the switch is refused by name (400, param),
    as is one that asks what its template_kwargs contradict. template_kwargs: the chat door's
    chat_template_kwargs, passed to the template as they are."""
    return template_thinking(ctx.inference, enable, param, template_kwargs)


def template_thinking(inference: Inference, enable: bool | None, param: str,
                      template_kwargs: dict | None = None) -> Thinking:
    """thinking_for on the model itself, for what has no server Context (cli_chat.py)."""
    kwargs = dict(template_kwargs or {})
    if enable is not None:
        if not has_switch(inference):
            raise APIError(400, f"{param}: this model's chat template has no thinking switch ({SWITCH}); leave "
                                f"{param} out", param=param, code="unsupported_parameter")
        if kwargs.get(SWITCH, enable) != enable:
            raise APIError(400, f"{param} asks for thinking {'on' if enable else 'off'}, chat_template_kwargs."
                                f"{SWITCH} for the opposite", param=param, code="invalid_value")
        kwargs[SWITCH] = enable
    if not any(tag in template_text(inference) for tag in (OPEN, CLOSE)):
        return Thinking(kwargs, False, False)  # the template knows nothing of thinking: neither can the answer
    try:
        opened = _generation_prompt(inference, kwargs)
    except Exception:  # the template refuses the kwargs: the prompt's rendering says so, naming messages
        return Thinking(kwargs, True, False)
    if CLOSE in opened.split(OPEN)[-1] and OPEN in opened:  # thinking closed empty: turned off
        return Thinking(kwargs, False, False)
    return Thinking(kwargs, True, OPEN in opened)


def drop_thinking(messages: list[dict], inference: Inference) -> list[dict]:
    """Earlier assistant turns without their <think>...</think>, as Qwen3's template renders them (it cuts
    everything up to the last </think> from an assistant turn before the last user message). A template that
    handles </think> itself gets the messages as they are; one that does not would show the old thinking."""
    if CLOSE in template_text(inference):
        return messages
    return [{**m, "content": m["content"].rsplit(CLOSE, 1)[-1].lstrip("\n")}
            if m.get("role") == "assistant" and CLOSE in (m.get("content") or "") else m for m in messages]
