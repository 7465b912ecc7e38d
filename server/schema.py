"""The request bodies the server accepts: the fields of OpenAI's chat-completions and legacy completions
requests we honour, and the sampling extensions the local servers share (vLLM, llama.cpp). Fields declared
nowhere here are kept aside: server/fields.py accepts the documented no-ops among them and refuses every
other by name. Known ones are typed strictly (no `true` for an integer, no "3" for a number), so that
nonsense is refused before it reaches the model, and every string is checked to be valid Unicode text
(server/validation.py) before anything reads it."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.validation import check_text

INT64 = 2**63
MAX_TOOLS = 128  # OpenAI's limit on the tools (or functions) of one request


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(Lenient):
    type: str
    text: str | None = None


class FunctionCallIn(Lenient):
    name: str
    arguments: str | dict = "{}"


class ToolCallIn(Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCallIn | None = None
    reasoning_content: str | None = None  # an assistant turn's thinking, sent back as vLLM returned it


class FunctionDef(Lenient):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict | None = None


class NamedByFunction:
    """A tools-style object named by its `function`: it answers `.name` as the legacy objects do, so
    prompt.py filters and matches both kinds by one rule."""

    @property
    def name(self) -> str:
        return self.function.name


class ToolDef(NamedByFunction, Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionName(Lenient):
    name: str


class NamedToolChoice(NamedByFunction, Lenient):
    type: Literal["function"] = "function"
    function: FunctionName


class JSONSchemaFormat(Lenient):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    # "schema" would shadow a BaseModel attribute; the alias keeps OpenAI's name on the wire.
    json_schema: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Lenient):
    # A field beside these (llama.cpp's "schema" under json_object, say) would change the answer: refused.
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(Lenient):
    include_usage: bool | None = False


class RequestBody(BaseModel):
    """A whole request body, of any door: strictly typed, every string checked to be valid Unicode text before
    anything reads it, and the fields no subclass declares kept in `model_extra` for server/fields.py."""
    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        return check_text(data)


class Sampling(RequestBody):
    """Fields both OpenAI endpoints honour (server/params.py builds the sampling parameters from them)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, lt=INT64)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    # The documented limits below are checked where a violation gets a 400 that names the rule, as OpenAI
    # answers it (server/params.py); the schema only tells clients (and fuzzers) what is valid.
    stop: str | list[str] | None = Field(None, json_schema_extra={"maxItems": 4})
    n: int | None = Field(None, json_schema_extra={"minimum": 1, "maximum": 16})
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = Field(None, json_schema_extra={"maxProperties": 300})
    # The local servers' sampling extensions, with vLLM's meanings.
    top_k: int | None = Field(None, ge=-1, lt=INT64)  # -1 or 0: no top-k cut
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    repetition_penalty: float | None = Field(None, ge=0.01, le=10, allow_inf_nan=False)
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(None, ge=0, lt=INT64)
    stop_token_ids: list[int] | None = Field(None, max_length=64)
    grammar: str | None = None  # llama.cpp's GBNF


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, lt=INT64)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, json_schema_extra={"minimum": 0, "maximum": 20})
    tools: list[ToolDef] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: list[FunctionDef] | None = Field(None, max_length=MAX_TOOLS)
    function_call: Literal["none", "auto"] | FunctionName | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # The thinking (server/reasoning.py): vLLM's template variables, and OpenAI's effort mapped onto the
    # template's thinking switch.
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None


class CompletionRequest(Sampling):
    """The legacy text endpoint, /v1/completions: a raw prompt, no chat template."""
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    logprobs: int | None = Field(None, json_schema_extra={"minimum": 0, "maximum": 5})
    echo: bool | None = False
    best_of: int | None = None  # honoured when it equals n (or 1): every choice generated is returned


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
