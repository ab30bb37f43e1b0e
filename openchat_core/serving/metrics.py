"""Prometheus metrics and per-request accounting (the middleware that also writes the request log).

Each app owns a `CollectorRegistry` (not prometheus_client's global one), so several apps in one
process (tests, a model switch, vLLM's own collectors) never clash on metric names.

The accounting middleware times every request from the first byte in to the last byte out
(streams included), records its status (499 when the client went away before the end), and
merges what the route put in `scope["state"]["openchat_log"]` (tokens, model, finish reasons)
into one request-log line. Route labels are the route templates, never raw paths, so a scanner
cannot blow up label cardinality.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from openchat_core.serving.request_log import RequestLog

LOG_STATE_KEY = "openchat_log"
CLIENT_CLOSED = 499
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("openchat_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.latency = Histogram("openchat_request_latency_seconds", "Time from request to last response byte.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("openchat_time_to_first_token_seconds", "Time to the first generated token (chat and completions).",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("openchat_prompt_tokens", "Prompt tokens of chat completions and completions.", registry=r)
        self.completion_tokens = Counter("openchat_completion_tokens", "Generated tokens of chat completions and completions.", registry=r)
        self.in_flight = Gauge("openchat_requests_in_flight", "Chat completions and completions being generated.", registry=r)
        self.model_info = Gauge("openchat_model_info", "The live model (value 1).",
                                ["served_name", "model_type", "registry_version", "engine"], registry=r)
        self.switches = Counter("openchat_model_switches", "Model switch attempts by result.", ["result"], registry=r)

    def set_live_model(self, served_name: str, model_type: str, registry_version: str | None, engine: str) -> None:
        self.model_info.clear()
        self.model_info.labels(served_name, model_type, registry_version or "", engine).set(1)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class AccountingMiddleware:
    """Times requests, counts them by route/status, and writes one request-log line per logged route."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, request_log: RequestLog | None,
                 logged_prefixes: tuple[str, ...] = ("/v1/", "/admin/", "/tokenize", "/detokenize")) -> None:
        self.app = app
        self.metrics = metrics
        self.request_log = request_log
        self.logged_prefixes = logged_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = scope.setdefault("state", {})
        record: dict[str, Any] = {}
        state[LOG_STATE_KEY] = record
        status = CLIENT_CLOSED
        completed = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, completed
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            status = 500 if not completed else status
            raise
        finally:
            final_status = status if completed else CLIENT_CLOSED
            self._record(scope, record, final_status, time.perf_counter() - start)

    def _record(self, scope: Scope, record: dict[str, Any], status: int, latency: float) -> None:
        route = _route_label(scope)
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(latency)
        path = scope.get("path", "")
        if self.request_log is not None and path.startswith(self.logged_prefixes):
            self.request_log.write({
                "time": round(time.time(), 3),
                "method": scope.get("method"),
                "route": route,
                "path": path if route != "unmatched" else None,
                "status": status,
                "latency_s": round(latency, 4),
                **record,
            })
