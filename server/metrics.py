"""/metrics in Prometheus's text format, with the prometheus-client library. Each app has its own
CollectorRegistry, so that two apps in one process (the tests) count apart.

What is counted: HTTP requests by endpoint and status (an ASGI middleware, so that streamed answers are
counted too), prompt and completion tokens, time to first token and the mean time per output token of
each answer (histograms), prompt tokens found in the KV cache, and, read when scraped, the queue length
and the busy slots."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference import GenerationStats

PREFIX = "qwen_ascend_llm"
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
PER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, queued: Callable[[], int], busy: Callable[[], int]) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens of finished answers "
                                     "(once per prompt, however many choices share it)", registry=r)
        self.completion_tokens = Counter(f"{PREFIX}_completion_tokens", "Tokens generated", registry=r)
        self.reused_tokens = Counter(f"{PREFIX}_kv_cache_reused_tokens", "Prompt tokens found in the KV "
                                     "cache instead of computed", registry=r)
        self.first_token = Histogram(f"{PREFIX}_time_to_first_token_seconds", "From admission to the first "
                                     "token of each answer", buckets=FIRST_TOKEN_BUCKETS, registry=r)
        self.per_token = Histogram(f"{PREFIX}_time_per_output_token_seconds", "Mean time between output "
                                   "tokens of each answer of two or more tokens", buckets=PER_TOKEN_BUCKETS,
                                   registry=r)
        Gauge(f"{PREFIX}_queue_length", "Requests waiting for the model thread",
              registry=r).set_function(queued)
        Gauge(f"{PREFIX}_busy_slots", "Answers being generated (one KV-cache slot each)",
              registry=r).set_function(busy)

    def finished(self, stats: GenerationStats, first_of_prompt: bool) -> None:
        """An answer ended normally (the worker tells, from its thread: prometheus-client is thread-safe)."""
        if first_of_prompt:
            self.prompt_tokens.inc(stats.prompt_tokens)
        self.completion_tokens.inc(stats.completion_tokens)
        self.reused_tokens.inc(stats.reused_tokens)
        if stats.completion_tokens:
            self.first_token.observe(stats.first_token_s)
        if stats.decode_tok_s > 0:
            self.per_token.observe(1 / stats.decode_tok_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware: count each HTTP request under its route's path and the status it was answered with."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: set[str]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.endpoints:
            await self.app(scope, receive, send)
            return
        status = 500  # what a crash before the response starts becomes

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.requests.labels(scope["path"], str(status)).inc()
