"""The request body of POST /v1/responses: the fields of OpenAI's Responses API this server honours, typed as
strictly as the chat request (server/schema.py). Input items are kept as objects here and read one by one by
server/responses.py, so that a refusal can name the item. Fields declared nowhere here are kept aside for
server/fields.py to accept as documented no-ops or refuse by name."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.schema import INT64, MAX_TOOLS, Lenient, RequestBody


class FunctionTool(Lenient):
    """A function tool in the Responses shape: flat, no nested `function` object as chat has."""
    # Another type (web_search, file_search, mcp, ...) names a tool OpenAI runs itself; none runs here.
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class FunctionChoice(Lenient):
    type: Literal["function"]
    name: str


class TextFormat(Lenient):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64)
    description: str | None = None
    # "schema" would shadow a BaseModel attribute; the alias keeps OpenAI's name on the wire.
    json_schema: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class TextParam(Lenient):
    format: TextFormat | None = None
    # Only the default: this model has no setting for the length of its answers.
    verbosity: Literal["medium"] | None = None


class ReasoningParam(Lenient):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(RequestBody):

    model: str | None = None
    input: str | list[dict] = Field(min_length=1)
    instructions: str | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1, lt=INT64)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None
    stream: bool | None = False


class Part(Lenient):
    """A content part of an input item; only text parts are read (input_text, output_text, refusal)."""
    type: str
    text: str | None = None
    refusal: str | None = None


class MessageItem(Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]


class FunctionCallItem(Lenient):
    """A call the model made in an earlier turn, sent back by the client."""
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(Lenient):
    """The client's result of a call, matched to the call by call_id."""
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[Part]


class ReasoningItem(Lenient):
    """Earlier thinking sent back: accepted so that a client may return a whole output, and left out of the
    prompt, as the chat templates leave out the thinking of earlier turns."""
    type: Literal["reasoning"]


# The input item types read, by their `type` (a message may leave it out).
ITEMS: dict[str, type[Lenient]] = {"message": MessageItem, "function_call": FunctionCallItem,
                                   "function_call_output": FunctionCallOutputItem, "reasoning": ReasoningItem}
