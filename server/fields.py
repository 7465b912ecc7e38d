"""Which top-level request fields each endpoint honours, which it accepts as documented no-ops, and which it
refuses by name: the one place that says so (docs/api-fields.md is generated from it and a test keeps the two
equal). A field in none of the three is refused as OpenAI refuses it ("Unrecognized request argument
supplied"), so nothing that would change an answer is silently ignored.

Honoured fields are those the endpoint's request model declares (server/schema.py)."""
from __future__ import annotations

import json

from pydantic import BaseModel

from server.errors import APIError
from server.anthropic_schema import CountTokensRequest, MessagesRequest
from server.responses_schema import ResponsesRequest
from server.schema import ChatCompletionRequest, CompletionRequest

# Fields that change nothing about the answer, and why accepting them is harmless.
NO_OP = {
    "user": "an end-user id for the provider's abuse monitoring; nothing is monitored here",
    "safety_identifier": "the successor of user; nothing is monitored here",
    "metadata": "tags for the provider's stored completions; nothing is stored here",
    "store": "whether the provider stores the completion; nothing is stored here",
    "service_tier": "the provider's processing tier; every request is served alike",
    "prompt_cache_key": "a hint for the provider's prompt cache; the KV cache is matched by content",
    "prompt_cache_retention": "how long the provider keeps a cached prompt; slots keep theirs until reused",
    "modalities": "only [\"text\"] is accepted: this model answers in text",
}

# Fields OpenAI or a popular local server defines that would change the answer, and why we refuse them.
REFUSED = {
    "audio": "this model answers in text only",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "no chat template is rendered here; send it to /v1/chat/completions",
    "verbosity": "this model has no verbosity setting",
    "web_search_options": "this server does not search the web",
    "typical_p": "use top_p, top_k or min_p",
    "tfs_z": "use top_p, top_k or min_p",
    "top_a": "use top_p, top_k or min_p",
    "mirostat": "mirostat sampling is not supported; use temperature with top_p, top_k or min_p",
    "mirostat_tau": "mirostat sampling is not supported",
    "mirostat_eta": "mirostat sampling is not supported",
    "dynatemp_range": "dynamic temperature is not supported",
    "xtc_probability": "XTC sampling is not supported",
    "dry_multiplier": "DRY sampling is not supported; use repetition_penalty",
    "repeat_penalty": "send repetition_penalty (the OpenAI-compatible name)",
    "repeat_last_n": "repetition_penalty covers the whole prompt and answer",
    "penalty_last_n": "repetition_penalty covers the whole prompt and answer",
    "n_predict": "send max_tokens (the OpenAI-compatible name)",
    "json_schema": "send response_format: {\"type\": \"json_schema\", ...}",
    "length_penalty": "beam search is not supported",
    "use_beam_search": "beam search is not supported",
    "guided_json": "send response_format",
    "guided_regex": "regular-expression constraints are not supported",
    "guided_choice": "send response_format with an enum schema",
    "guided_grammar": "send grammar (GBNF)",
}
CHAT_ONLY_REFUSED = {"best_of": "every choice generated is returned (use n)"}
COMPLETIONS_ONLY_REFUSED = {"suffix": "this model completes after the prompt only (insertion needs a "
                                      "fill-in-the-middle prompt)"}
# The Responses API's own fields: its no-ops, and what needs state or OpenAI's hosted machinery. This server
# keeps no responses, so anything that would store one or refer to a stored one is refused.
RESPONSES_NO_OP = {**{k: v for k, v in NO_OP.items() if k not in ("store", "modalities")},
                   "store": "false only: this server keeps no responses (true is refused)",
                   "truncation": "\"disabled\" only: a prompt over --max_input_length is refused, never cut",
                   "stream_options": "include_obfuscation pads events against a side channel of the provider's "
                                     "network; nothing is padded here"}
RESPONSES_REFUSED = {
    "previous_response_id": "this server keeps no responses; send the whole conversation in input",
    "conversation": "this server keeps no conversations; send the whole conversation in input",
    "background": "a response is answered while the client waits",
    "prompt": "this server keeps no prompt templates; send instructions and input",
    "include": "no extra output data (encrypted reasoning, logprobs, search results) is produced",
    "max_tool_calls": "only function tools are offered, and the client runs those",
    "top_logprobs": "this endpoint reports no logprobs",
    "context_management": "a prompt over --max_input_length is refused, never compacted",
}
# Anthropic's Messages API: its own no-ops, and the fields that would need Anthropic's machinery.
MESSAGES_NO_OP = {
    "metadata": "metadata.user_id is for the provider's abuse detection; nothing is monitored here",
    "service_tier": "the provider's capacity tier; every request is served alike",
    "cache_control": "prompt-caching breakpoints; the KV cache is matched by content, with no breakpoints",
    "inference_geo": "where the provider runs the request; it runs here",
    "speed": "the provider's fast mode; there is one speed here",
}
MESSAGES_REFUSED = {
    "container": "code-execution containers are not provided",
    "mcp_servers": "MCP servers are not connected by this server",
    "context_management": "context editing is not provided; a prompt over --max_input_length is refused",
    "diagnostics": "not provided",
    "user_profile_id": "not provided",
    "workspace_id": "not provided",
}
# No-op fields accepted with these values only (None: the field sent as null); another value is refused.
ACCEPTED_VALUES = {("/v1/responses", "store"): (None, False), ("/v1/responses", "truncation"): (None, "disabled")}

ENDPOINTS: dict[str, type[BaseModel]] = {"/v1/chat/completions": ChatCompletionRequest,
                                         "/v1/completions": CompletionRequest,
                                         "/v1/responses": ResponsesRequest,
                                         "/v1/messages": MessagesRequest,
                                         "/v1/messages/count_tokens": CountTokensRequest}


def honoured(endpoint: str) -> list[str]:
    return sorted(ENDPOINTS[endpoint].model_fields)


def no_op(endpoint: str) -> dict[str, str]:
    if endpoint.startswith("/v1/messages"):
        return MESSAGES_NO_OP
    return RESPONSES_NO_OP if endpoint == "/v1/responses" else NO_OP


def refused(endpoint: str) -> dict[str, str]:
    if endpoint == "/v1/responses":
        return dict(RESPONSES_REFUSED)
    if endpoint.startswith("/v1/messages"):
        return {k: v for k, v in MESSAGES_REFUSED.items() if k not in ENDPOINTS[endpoint].model_fields}
    out = dict(REFUSED)
    out.update(CHAT_ONLY_REFUSED if endpoint == "/v1/chat/completions" else COMPLETIONS_ONLY_REFUSED)
    return {k: v for k, v in out.items() if k not in ENDPOINTS[endpoint].model_fields}


def check_fields(req: BaseModel, endpoint: str) -> None:
    """A 400 naming the first field of req that this endpoint neither honours nor accepts as a no-op."""
    refusals = refused(endpoint)
    for name, value in (req.model_extra or {}).items():
        if name == "modalities" and value not in (None, ["text"]):
            raise APIError(400, "modalities: this model answers in text only (send [\"text\"] or leave it out)",
                           param="modalities", code="unsupported_parameter")
        allowed = ACCEPTED_VALUES.get((endpoint, name))
        if allowed is not None and value not in allowed:
            raise APIError(400, f"{name}: {json.dumps(value)[:40]} is not supported by this server: "
                                f"{no_op(endpoint)[name]}", param=name, code="unsupported_parameter")
        if name in no_op(endpoint):
            continue
        if name in refusals:
            raise APIError(400, f"{name} is not supported by this server: {refusals[name]}", param=name,
                           code="unsupported_parameter")
        raise APIError(400, f"Unrecognized request argument supplied: {name}", param=name,
                       code="unknown_parameter")


def fields_table(endpoint: str) -> str:
    """The endpoint's fields as a Markdown table: what docs/api-fields.md shows."""
    rows = [f"| `{name}` | honoured | |" for name in honoured(endpoint)]
    rows += [f"| `{name}` | accepted, changes nothing | {why} |" for name, why in sorted(no_op(endpoint).items())]
    rows += [f"| `{name}` | refused (400) | {why} |" for name, why in sorted(refused(endpoint).items())]
    return "\n".join([f"### `POST {endpoint}`", "", "| field | what the server does | why |", "|---|---|---|",
                      *rows, "", "Any other top-level field is refused (400, `unknown_parameter`)."])


def document() -> str:
    """docs/api-fields.md, whole."""
    head = ("# Request fields\n\nEvery top-level field of a request is honoured, accepted as a documented no-op, "
            "or refused with a 400 that names it; any other field is refused too, as OpenAI refuses it. "
            "This page is generated from `server/fields.py` (`python -m server.fields > docs/api-fields.md`); "
            "a test fails when the two differ.\n")
    return "\n\n".join([head] + [fields_table(e) for e in ENDPOINTS]) + "\n"


if __name__ == "__main__":
    print(document(), end="")
