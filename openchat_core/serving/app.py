"""The app factory: `build_app(settings) -> FastAPI`, with thin routes and no module-level state.

Everything per-app lives on `app.state`: `settings`, `models` (the `ModelManager`; the live engine
is `app.state.models.current.engine`, which a model switch replaces), `chat` (the chat service),
`metrics`, `request_log`. The lifespan loads the first model (engine start + smoke test) before
the server accepts connections and shuts every engine down on exit; a model that cannot load
makes start-up fail (uvicorn exits non-zero), which is what a deploy step wants to see.

Middleware, outermost first: CORS (only if `allowed_origins`), accounting (metrics + request
log; counts 401s too), auth (API keys; admin key on /admin/*; /health open).

Routes: POST /v1/chat/completions, POST /v1/completions (echo + logprobs: log-likelihood scoring),
POST /tokenize, POST /detokenize, GET /tokenizer_info (vLLM's shapes), GET /v1/models, GET /v1/models/{id}, GET /health (liveness),
GET /ready (a model is live and its engine healthy), GET /metrics (Prometheus),
POST /admin/load and GET /admin/status (model switch; see `runtime.ModelManager`),
GET /openapi.json (guarded like the API).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from openchat_core import __version__
from openchat_core.serving.auth import OPEN_PATHS, AuthMiddleware
from openchat_core.serving.chat import ChatService
from openchat_core.serving.completions import CompletionService
from openchat_core.serving.errors import OpenAIError, install_error_handlers
from openchat_core.serving.metrics import LOG_STATE_KEY, AccountingMiddleware, ServingMetrics
from openchat_core.serving.protocol import (
    AdminLoadRequest,
    AdminLoadResponse,
    AdminStatusResponse,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    ReadyResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from openchat_core.serving.request_log import RequestLog
from openchat_core.serving.runtime import (
    EngineFactory,
    ModelLoadError,
    ModelManager,
    ModelRuntime,
    ModelSpec,
    ModelSwitchError,
    default_engine_factory,
)
from openchat_core.serving.settings import ServeSettings
from openchat_core.serving.tokenization import detokenize, tokenize, tokenizer_info

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (body, values, context length)."},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
}


def spec_from_settings(settings: ServeSettings) -> ModelSpec:
    return ModelSpec(settings.model, settings.served_name, settings.registry_version, settings.model_type)


def build_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", response_model=None, responses={
        200: {"model": ChatCompletionResponse, "content": {"text/event-stream": {}},
              "description": "A completion, or server-sent chunks ending with `data: [DONE]` when stream is true."},
        **_ERRORS,
        404: {"model": ErrorResponse, "description": "Unknown model name."},
        503: {"model": ErrorResponse, "description": "No model is live, or its engine is down."}})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """OpenAI chat completions plus OpenChat's `condition` (see openchat_core.serving.chat)."""
        return await request.app.state.chat.create(body, request)

    @router.post("/v1/completions", response_model=None, responses={
        200: {"model": CompletionResponse, "content": {"text/event-stream": {}},
              "description": "A completion, or server-sent chunks ending with `data: [DONE]` when stream is true."},
        **_ERRORS,
        404: {"model": ErrorResponse, "description": "Unknown model name."},
        503: {"model": ErrorResponse, "description": "No model is live, or its engine is down."}})
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """OpenAI (legacy) completions: text or token-id prompts, echo, logprobs (see openchat_core.serving.completions)."""
        return await request.app.state.completions.create(body, request)

    @router.post("/tokenize", response_model=TokenizeResponse,
                 responses={**_ERRORS, 404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def tokenize_route(body: TokenizeRequest, request: Request) -> TokenizeResponse:
        """Token ids of a text prompt (as /v1/completions sees it) or of chat messages (as the chat route renders them)."""
        return tokenize(body, _live(request), request.app.state.settings.enable_system_prompt)

    @router.post("/detokenize", response_model=DetokenizeResponse,
                 responses={**_ERRORS, 404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def detokenize_route(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
        return detokenize(body, _live(request))

    @router.get("/tokenizer_info", response_model=TokenizerInfo, responses={**_ERRORS, 503: {"model": ErrorResponse}})
    async def tokenizer_info_route(request: Request) -> TokenizerInfo:
        """Special tokens and context size (lm-eval's remote tokenizer reads it)."""
        return tokenizer_info(_live(request))

    @router.get("/v1/models", response_model=ModelList, responses={**_ERRORS, 503: {"model": ErrorResponse}})
    async def list_models(request: Request) -> ModelList:
        """The served name, the model type and its aliases, then each --lora adapter (all accepted as `model`)."""
        return ModelList(data=_live(request).cards())

    @router.get("/v1/models/{model_id}", response_model=ModelCard,
                responses={**_ERRORS, 404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def get_model(model_id: str, request: Request) -> ModelCard:
        for card in _live(request).cards():
            if card.id == model_id:
                return card
        raise OpenAIError(404, f"The model `{model_id}` does not exist; see GET /v1/models.", code="model_not_found",
                          param="model")

    @router.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        """Liveness: the process answers. No key needed (for probes)."""
        return HealthResponse()

    @router.get("/ready", response_model=ReadyResponse, responses={**_ERRORS, 503: {"model": ErrorResponse}})
    async def ready(request: Request) -> ReadyResponse:
        """Readiness: a model is live and its engine is healthy."""
        manager: ModelManager = request.app.state.models
        if not manager.ready:
            raise OpenAIError(503, "No healthy model is live yet; retry shortly.", code="model_not_ready")
        runtime = _live(request)
        return ReadyResponse(model=runtime.served_name, registry_version=runtime.registry_version)

    @router.get("/metrics", response_class=Response, responses={**_ERRORS, 200: {"content": {"text/plain": {}}}})
    async def metrics(request: Request) -> Response:
        """Prometheus exposition: requests, latency, tokens, time to first token, live model, switches."""
        body, content_type = request.app.state.metrics.exposition()
        return Response(content=body, media_type=content_type)

    @router.post("/admin/load", response_model=AdminLoadResponse, responses={
        **_ERRORS,
        404: {"model": ErrorResponse, "description": "Admin routes are off (no --admin-key)."},
        409: {"model": ErrorResponse, "description": "Another switch is in progress."},
        422: {"model": ErrorResponse, "description": "The candidate failed to load or failed its smoke test; "
                                                     "the previous model is still live."}})
    async def admin_load(body: AdminLoadRequest, request: Request) -> AdminLoadResponse:
        """Load a checkpoint beside the live model, smoke-test it, make it live, drain the old one."""
        return await _switch_model(body, request)

    @router.get("/admin/status", response_model=AdminStatusResponse,
                responses={**_ERRORS, 404: {"model": ErrorResponse}})
    async def admin_status(request: Request) -> AdminStatusResponse:
        manager: ModelManager = request.app.state.models
        return AdminStatusResponse(pid=os.getpid(), model=manager.current.info() if manager.current else None,
                                   draining=[r.info() for r in manager.draining], switching=manager.switching,
                                   engine_starts=manager.engine_starts)

    return router


def _live(request: Request) -> ModelRuntime:
    return request.app.state.models.live()  # ModelSwitchError -> its OpenAI error (errors.install_error_handlers)


async def _switch_model(body: AdminLoadRequest, request: Request) -> AdminLoadResponse:
    manager: ModelManager = request.app.state.models
    metrics: ServingMetrics = request.app.state.metrics
    record: dict[str, Any] = request.scope.get("state", {}).get(LOG_STATE_KEY, {})
    record.update({"admin": "load", "candidate": body.model, "registry_version": body.registry_version})
    try:
        path = Path(body.model).expanduser().resolve()  # "~user" with an unknown user raises RuntimeError
        is_dir = path.is_dir()
    except (OSError, RuntimeError, ValueError):
        is_dir = False
    if not is_dir:
        raise OpenAIError(400, f"{body.model} is not a folder on the server; pass the checkpoint folder path "
                               f"as the server sees it.", param="model", code="model_not_found")
    try:
        outcome = await manager.switch(ModelSpec(path, body.served_name, body.registry_version, body.model_type))
    except ModelSwitchError:
        metrics.switches.labels("conflict").inc()
        raise
    except ModelLoadError as exc:
        metrics.switches.labels(f"{exc.stage}_failed").inc()
        record["error"] = str(exc)
        live = manager.current.fingerprint if manager.current else "none"
        raise OpenAIError(422, f"Model not switched ({exc.stage} failed): {exc}. Still serving {live}.",
                          param="model", code=f"{exc.stage}_failed") from exc
    metrics.switches.labels("ok").inc()
    return AdminLoadResponse(model=outcome.runtime.info(), previous=outcome.previous.info() if outcome.previous else None,
                             load_seconds=outcome.load_seconds, smoke=outcome.smoke, reused_engine=outcome.reused_engine)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus what the middleware does: bearer auth everywhere but /health, 400 not 422."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "HTTPValidationError" in str(responses.get("422", "")):
                del responses["422"]  # validation errors are answered with 400 (OpenAI's status)
            if path in OPEN_PATHS:
                continue
            operation["security"] = [{"bearer": []}]
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    app.openapi_schema = schema
    return schema


def build_app(settings: ServeSettings, *, engine_factory: EngineFactory | None = None) -> FastAPI:
    """A ready-to-run app for `settings`; `engine_factory(kind, EngineConfig)` lets tests plug in a fake engine."""
    metrics = ServingMetrics()
    request_log = (RequestLog(settings.log_file, max_mb=settings.log_max_mb, backup_count=settings.log_max_count,
                              log_prompts=settings.log_prompts) if settings.log_file else None)
    manager = ModelManager(settings, engine_factory or default_engine_factory,
                           on_live=lambda rt: metrics.set_live_model(rt.served_name, rt.model_type.name,
                                                                     rt.registry_version, rt.engine_kind))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await manager.start(spec_from_settings(settings))
            yield
        finally:
            await manager.shutdown()
            if request_log is not None:
                request_log.close()

    app = FastAPI(title="OpenChat serving", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="OpenAI-compatible chat completions for OpenChat models (C-RLFT `condition` supported).")
    app.state.settings = settings
    app.state.models = manager
    app.state.metrics = metrics
    app.state.request_log = request_log
    app.state.chat = ChatService(settings, manager, metrics)
    app.state.completions = CompletionService(settings, manager, metrics)
    install_error_handlers(app)
    app.include_router(build_router())
    app.add_middleware(AuthMiddleware, api_keys=settings.api_key_values(), admin_key=settings.admin_key_value())
    app.add_middleware(AccountingMiddleware, metrics=metrics, request_log=request_log)
    if settings.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app

