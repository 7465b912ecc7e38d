"""The request fields we refuse by name because they would change the answer and this server does not honour
them (nothing that changes the output is silently ignored)."""
from __future__ import annotations

from server.errors import APIError
from server.schema import Sampling

# Fields OpenAI (or a popular OpenAI-compatible server) defines that would change the answer, and why we
# do not honour them. Fields that change nothing we return (user, metadata, store, service_tier, ...) are
# accepted and ignored.
REFUSED = {
    "audio": "this model answers in text only",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "this model does not reason in a separate channel",
    "verbosity": "this model has no verbosity setting",
    "web_search_options": "this server does not search the web",
    "top_k": "use top_p (the server's --sampling_method sets top-k for every request)",
    "min_p": "use top_p",
    "typical_p": "use top_p",
    "repetition_penalty": "use presence_penalty or frequency_penalty",
    "length_penalty": "beam search is not supported",
    "use_beam_search": "beam search is not supported",
    "min_tokens": "not supported",
    "guided_json": "use response_format",
    "guided_regex": "not supported",
    "guided_choice": "not supported",
    "guided_grammar": "not supported",
}


def refuse_unknown(req: Sampling) -> None:
    """A 400 naming the first field that would change the answer and that we do not honour."""
    extra = req.model_extra or {}
    for name, why in REFUSED.items():
        if extra.get(name) is not None:
            raise APIError(400, f"{name} is not supported by this server: {why}", param=name,
                           code="unsupported_parameter")
    modalities = extra.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise APIError(400, "modalities: this model answers in text only (send [\"text\"] or leave it out)",
                       param="modalities", code="unsupported_parameter")
