"""The request bodies the server accepts: the subset of OpenAI's chat-completions and legacy completions
requests we honour. Unknown fields are kept aside: server/options.py refuses by name those that would change
the answer, the rest are ignored (clients send many we have no use for); known ones are typed strictly (no
`true` for an integer, no "3" for a number), so that nonsense is refused before it reaches the model, and
every string is checked to be valid Unicode text (server/validation.py) before anything reads it."""
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
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(Lenient):
    include_usage: bool | None = False


class Sampling(BaseModel):
    """Fields both endpoints honour (server/params.py builds the sampling parameters from them). Fields a
    request sends that no model here declares are kept in `model_extra`, so that those which would change
    the answer are refused by name (server/options.py) and the rest ignored."""
    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        return check_text(data)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, lt=INT64)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    # The documented limits below are checked where a violation gets a 400 that names the rule, as OpenAI
    # answers it (server/prompt.py, server/options.py); the schema only tells clients (and fuzzers) what is valid.
    stop: str | list[str] | None = Field(None, json_schema_extra={"maxItems": 4})
    n: int | None = Field(None, json_schema_extra={"minimum": 1, "maximum": 16})
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = Field(None, json_schema_extra={"maxProperties": 300})


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, lt=INT64)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, json_schema_extra={"minimum": 0, "maximum": 20})
    tools: list[ToolDef] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: list[FunctionDef] | None = Field(None, max_length=MAX_TOOLS)
    function_call: Literal["none", "auto"] | FunctionName | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(Sampling):
    """The legacy text endpoint, /v1/completions: a raw prompt, no chat template."""
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    logprobs: int | None = Field(None, json_schema_extra={"minimum": 0, "maximum": 5})
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
