"""The request bodies of Anthropic's Messages API the server accepts (POST /v1/messages and
/v1/messages/count_tokens): the fields it honours, typed strictly; content blocks are read one by one by
server/anthropic.py, so that a refusal names the block. Fields declared nowhere here are judged by
server/fields.py."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.schema import INT64, MAX_TOOLS, RequestBody


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class Block(BaseModel):
    """One content block: its type decides which fields it carries."""
    model_config = ConfigDict(extra="allow", strict=True)
    type: str


class InputMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(_Strict):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict
    type: Literal["custom"] | None = None  # a tool Anthropic runs itself (bash, web search, ...) runs nowhere here


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_Strict):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=1, lt=INT64)  # accepted; the model ends its thinking itself
    display: Literal["summarized", "omitted"] | None = None


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    type: Literal["json_schema"]
    json_schema: dict = Field(alias="schema")  # "schema" would shadow a BaseModel attribute


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: OutputFormat | None = None
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None


class CountTokensRequest(RequestBody):
    """What decides a prompt's tokens: the model, system, messages, tools and thinking."""

    model: str
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[Block] | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1, lt=INT64)  # required, as Anthropic requires it
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, lt=INT64)
