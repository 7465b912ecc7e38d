"""Which conversation a request belongs to: the key the router keeps a conversation on one replica with.

A chat's later turns resend its beginning, so the messages up to and including the first user message are
the same in every turn: their hash names the conversation. A request with OpenAI's `user` field is keyed
by that instead (one end user's chats then share a replica). No key (another route, a body that is not a
chat request) means any replica will do."""
from __future__ import annotations

import hashlib
import json


def conversation_key(path: str, body: bytes) -> str | None:
    if path.rstrip("/") != "/v1/chat/completions" or not body:
        return None
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(request, dict):
        return None
    user = request.get("user")
    if isinstance(user, str) and user:
        return "user:" + user
    messages = request.get("messages")
    if not isinstance(messages, list):
        return None
    opening = []
    for message in messages:
        opening.append(message)
        if isinstance(message, dict) and message.get("role") == "user":
            break
    else:
        return None
    text = json.dumps(opening, sort_keys=True, ensure_ascii=False)
    return "chat:" + hashlib.sha256(text.encode()).hexdigest()[:32]
