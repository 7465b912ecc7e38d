"""A real client against api.py on the default model: LangChain's ChatOpenAI (invoke, stream, a tool round
trip with bind_tools and a ToolMessage, with_structured_output through a json_schema). Every whole response
it receives is checked against OpenAI's published schema on the way in."""
from __future__ import annotations

import json

import httpx
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from api_helpers import serve, validate
from structured_helpers import default_int4_long

pytestmark = pytest.mark.default_model

MODEL = "qwen"


class Weather(BaseModel):
    """Current weather in a city."""

    city: str = Field(description="the city's name")


class Country(BaseModel):
    name: str
    capital: str
    population_millions: float = Field(ge=0)
    languages: list[str] = Field(max_length=4)


@pytest.fixture(scope="module")
def base_url(default_model_dir, tmp_path_factory):
    onnx = default_int4_long(default_model_dir, tmp_path_factory)
    args = ["api.py", "--hf_model_dir", str(default_model_dir), "--onnx_model_path", str(onnx),
            "--max_prefill_length", "64", "--served_model_name", MODEL]
    with serve(args, tmp_path_factory.mktemp("langchain")) as s:
        yield s.base_url


def _check_shape(response: httpx.Response) -> None:
    if response.headers.get("content-type", "").startswith("application/json"):
        response.read()
        validate(response.json(), "CreateChatCompletionResponse" if response.status_code == 200 else "ErrorResponse")


@pytest.fixture(scope="module")
def llm(base_url) -> ChatOpenAI:
    http = httpx.Client(event_hooks={"response": [_check_shape]}, timeout=600)
    return ChatOpenAI(base_url=base_url, api_key="unused", model=MODEL, temperature=0, max_retries=0,
                      max_tokens=200, http_client=http)


def test_invoke_and_stream_give_the_same_answer(llm) -> None:
    question = [HumanMessage("What is the capital of France? Answer in one short sentence.")]
    whole = llm.invoke(question)
    assert "Paris" in whole.content
    streamed = list(llm.stream(question))
    assert len(streamed) > 1 and "".join(c.content for c in streamed) == whole.content


def test_bind_tools_round_trip_with_a_tool_message(llm) -> None:
    tools_llm = llm.bind_tools([Weather])
    messages = [HumanMessage("What is the weather like in Paris right now?")]
    ai = tools_llm.invoke(messages)
    assert len(ai.tool_calls) == 1 and ai.tool_calls[0]["name"] == "Weather"
    assert ai.tool_calls[0]["args"] == {"city": "Paris"}
    result = ToolMessage(json.dumps({"temperature_c": 18, "sky": "sunny"}), tool_call_id=ai.tool_calls[0]["id"])
    messages += [ai, result]
    # With the tool still offered the 0.5B model calls it again and again; "none" asks for the answer in words.
    final = llm.bind_tools([Weather], tool_choice="none").invoke(messages)
    assert not final.tool_calls and "18" in final.content  # the tool's result reached the model


def test_required_tool_choice_forces_a_call(llm) -> None:
    ai = llm.bind_tools([Weather], tool_choice="required").invoke([HumanMessage("Hello there!")])
    assert len(ai.tool_calls) >= 1 and all(c["name"] == "Weather" for c in ai.tool_calls)
    assert all(isinstance(c["args"].get("city"), str) for c in ai.tool_calls)


def test_with_structured_output_returns_a_validated_object(llm) -> None:
    structured = llm.with_structured_output(Country, method="json_schema")
    country = structured.invoke([HumanMessage("Tell me about France.")])
    assert isinstance(country, Country)
    assert country.capital == "Paris" and 0 < len(country.languages) <= 4
