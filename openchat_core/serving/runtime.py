"""The live model and how it is replaced without downtime.

`ModelRuntime` is one loaded checkpoint: its engine, its OpenChat template (the same code that
tokenized the training data), stop ids, names, and a count of requests in flight.

`ModelManager` holds the live runtime and switches it:
1. load the candidate beside the live one (the live one keeps serving; engine start-up runs in
   a worker thread, so the event loop is never blocked),
2. smoke-test it: one short greedy chat completion must produce at least one token and finish,
3. make it live with one assignment (new requests lease the new runtime from then on; requests
   in flight keep the runtime they leased),
4. drain the old one in the background (wait until its in-flight count is zero, at most
   `drain_timeout_s`) and shut its engine down.
If loading or the smoke test fails, the candidate is shut down and the live model is untouched;
the error says why. One switch at a time (`ModelSwitchError(409)` otherwise).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_core.serving.engines.base import Engine, EngineConfig, SamplingOptions
from openchat_core.serving.protocol import LoadedModelInfo, ModelCard, SmokeResult
from openchat_core.serving.settings import ServeSettings
from openchat_core.templates.model_types import ModelType

logger = logging.getLogger("openchat_core.serving")

EngineFactory = Callable[[str, EngineConfig], Engine]


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a checkpoint folder plus how to present it."""

    model_dir: Path
    served_name: str | None = None
    registry_version: str | None = None
    model_type: str | None = None


class ModelLoadError(RuntimeError):
    """The candidate could not be loaded or failed its smoke test; `stage` says which."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class ModelSwitchError(RuntimeError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class ModelRuntime:
    spec: ModelSpec
    engine: Engine
    engine_kind: str
    template: Any  # ConversationTemplate
    model_type: ModelType
    served_name: str
    stop_token_ids: tuple[int, ...]
    special_tokens: tuple[str, ...]
    tokenizer: Any = None  # the checkpoint's Hugging Face tokenizer (completions, /tokenize, logprob token texts)
    created: int = field(default_factory=lambda: int(time.time()))
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def registry_version(self) -> str | None:
        return self.spec.registry_version

    @property
    def max_context(self) -> int:
        return self.engine.max_context

    @property
    def names(self) -> tuple[str, ...]:
        """Every `model` value a request may use: served name, model type name, its aliases."""
        return tuple(dict.fromkeys((self.served_name, self.model_type.name, *self.model_type.aliases)))

    @property
    def fingerprint(self) -> str:
        return f"{self.served_name}@{self.registry_version}" if self.registry_version else self.served_name

    def acquire(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def info(self) -> LoadedModelInfo:
        return LoadedModelInfo(served_name=self.served_name, model_type=self.model_type.name,
                               registry_version=self.registry_version, model_dir=str(self.spec.model_dir),
                               engine=self.engine_kind, max_context=self.max_context)

    def cards(self) -> list[ModelCard]:
        return [ModelCard(id=name, created=self.created, root=self.served_name, model_type=self.model_type.name,
                          registry_version=self.registry_version, max_context=self.max_context) for name in self.names]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _eos_ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def context_length(model_dir: Path, model_type: ModelType, cap: int | None) -> int:
    """The model type's max context, bounded by the model's position embeddings and the settings cap."""
    from openchat_core.models.checkpoint import context_limit

    limit = context_limit(model_dir, model_type.name)
    return limit if cap is None else min(limit, cap)


MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def check_safetensors(model_dir: Path) -> None:
    """Fail fast, with a readable reason, on missing, truncated or corrupt safetensors files.

    vLLM reports a corrupt header as a bare `MemoryError` (it trusts the 8-byte header length);
    this reads only each file's header and checks that every tensor lies inside the file.
    """
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError("load", f"{model_dir} has no *.safetensors weights")
    for path in files:
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                if not 2 <= length <= min(size - 8, MAX_SAFETENSORS_HEADER):
                    raise ValueError(f"header length {length} does not fit a {size}-byte file")
                header = json.loads(f.read(length))
            data_size = size - 8 - length
            for name, info in header.items():
                if name != "__metadata__" and info["data_offsets"][1] > data_size:
                    raise ValueError(f"tensor {name} ends past the end of the file (truncated?)")
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelLoadError("load", f"{path.name} is not a valid safetensors file: {exc}") from exc


def _load_template(model_dir: Path, model_type: ModelType) -> tuple[Any, tuple[str, ...], Any]:
    from openchat_core.models.checkpoint import checkpoint_template
    from openchat_core.templates.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    template = checkpoint_template(model_dir, model_type.name, tokenizer)
    specials = tuple(t for t in tokenizer.all_special_tokens if t)
    added = tuple(t.content for t in tokenizer.added_tokens_decoder.values() if getattr(t, "special", False))
    return template, tuple(dict.fromkeys((*specials, *added))), tokenizer


async def load_runtime(spec: ModelSpec, settings: ServeSettings, engine_factory: EngineFactory) -> ModelRuntime:
    """Load tokenizer/template and start an engine for `spec`; raises `ModelLoadError` with the reason."""
    kind = settings.engine
    model_dir = spec.model_dir.expanduser().resolve()
    spec = ModelSpec(model_dir, spec.served_name, spec.registry_version, spec.model_type)
    from openchat_core.models.checkpoint import checkpoint_model_type, is_adapter_checkpoint

    adapter = is_adapter_checkpoint(model_dir)
    if not ((model_dir / "config.json").is_file() or adapter):
        raise ModelLoadError("load", f"{model_dir} is not a model folder (no config.json or LoRA adapter_config.json)")
    if adapter and kind != "transformers":
        raise ModelLoadError("load", f"{model_dir} is a LoRA adapter: serve it with --engine transformers (vLLM LoRA serving is "
                                     f"not wired up yet), or register it merged (registry.merge_adapter: true)")

    try:
        model_type = checkpoint_model_type(model_dir, spec.model_type)
    except (FileNotFoundError, ValueError) as exc:
        raise ModelLoadError("load", f"{exc}; or serve a checkpoint written by the pipeline") from exc
    except KeyError as exc:
        raise ModelLoadError("load", str(exc.args[0])) from exc
    await asyncio.to_thread(check_safetensors, model_dir)
    try:
        template, special_tokens, tokenizer = await asyncio.to_thread(_load_template, model_dir, model_type)
    except Exception as exc:
        raise ModelLoadError("load", f"cannot load the tokenizer from {model_dir}: {exc}") from exc
    gen = _read_json(model_dir / "generation_config.json")
    stop_ids = tuple(dict.fromkeys((*template.eot_ids, *_eos_ids(gen.get("eos_token_id")))))
    config = EngineConfig(model_dir=model_dir, max_model_len=context_length(model_dir, model_type, settings.max_model_len),
                          dtype=settings.resolved_dtype(),
                          max_num_seqs=settings.max_num_seqs, seed=settings.seed, kv_cache_gib=settings.kv_cache_gib,
                          enforce_eager=settings.enforce_eager, threads=settings.torch_threads)
    engine = engine_factory(kind, config)
    try:
        await engine.start()
    except Exception as exc:
        await _quiet_shutdown(engine)
        raise ModelLoadError("load", f"the {kind} engine failed to start on {model_dir}: {type(exc).__name__}: {exc}") from exc
    served = spec.served_name or model_type.name
    return ModelRuntime(spec=spec, engine=engine, engine_kind=kind, template=template, model_type=model_type,
                        served_name=served, stop_token_ids=stop_ids, special_tokens=special_tokens,
                        tokenizer=tokenizer)


async def _quiet_shutdown(engine: Engine) -> None:
    try:
        await engine.shutdown()
    except Exception:
        logger.warning("engine shutdown failed", exc_info=True)


async def smoke_test(runtime: ModelRuntime, settings: ServeSettings) -> SmokeResult:
    """One short greedy completion; it must yield at least one token and finish. Raises ModelLoadError."""
    prompt = runtime.template.prompt_ids([{"role": "user", "content": settings.smoke_prompt}])
    max_tokens = max(1, min(settings.smoke_max_tokens, runtime.max_context - len(prompt)))
    options = SamplingOptions(max_tokens=max_tokens, stop_token_ids=runtime.stop_token_ids, temperature=0.0, stream=False)
    start = time.perf_counter()
    tokens, text, finish = 0, "", None

    async def run() -> None:
        nonlocal tokens, text, finish
        async for delta in runtime.engine.generate(f"smoke-{uuid.uuid4().hex}", prompt, options):
            tokens += len(delta.token_ids)
            text += delta.text
            finish = delta.finish_reason or finish

    try:
        await asyncio.wait_for(run(), settings.smoke_timeout_s)
    except TimeoutError as exc:
        raise ModelLoadError("smoke", f"smoke test did not finish within {settings.smoke_timeout_s:g} s") from exc
    except Exception as exc:
        raise ModelLoadError("smoke", f"smoke test failed: {type(exc).__name__}: {exc}") from exc
    if tokens < 1 or finish is None:
        raise ModelLoadError("smoke", f"smoke test produced {tokens} token(s) and finish_reason={finish!r}; "
                                      f"expected at least one token and a finish")
    return SmokeResult(tokens=tokens, finish_reason=finish, seconds=round(time.perf_counter() - start, 3), text=text)


@dataclass
class SwitchOutcome:
    runtime: ModelRuntime
    previous: ModelRuntime | None
    load_seconds: float
    smoke: SmokeResult


class ModelManager:
    """Owns the live runtime; see the module docstring for the switch protocol."""

    def __init__(self, settings: ServeSettings, engine_factory: EngineFactory,
                 on_live: Callable[[ModelRuntime], None] | None = None) -> None:
        self.settings = settings
        self.engine_factory = engine_factory
        self.on_live = on_live
        self.current: ModelRuntime | None = None
        self.draining: list[ModelRuntime] = []
        self._switch_lock = asyncio.Lock()
        self._drain_tasks: set[asyncio.Task[None]] = set()

    @property
    def switching(self) -> bool:
        return self._switch_lock.locked()

    @property
    def ready(self) -> bool:
        return self.current is not None and self.current.engine.ready

    def live(self) -> ModelRuntime:
        """The runtime new requests go to; 503 while none is loaded."""
        if self.current is None:
            raise ModelSwitchError(503, "model_not_ready", "No model is loaded yet; retry when /ready answers 200.")
        return self.current

    async def start(self, spec: ModelSpec) -> SwitchOutcome:
        """Load the first model (with the smoke test) before the server accepts requests."""
        return await self.switch(spec)

    async def switch(self, spec: ModelSpec) -> SwitchOutcome:
        if self._switch_lock.locked():
            raise ModelSwitchError(409, "switch_in_progress", "Another model switch is in progress; retry when it ends.")
        async with self._switch_lock:
            start = time.perf_counter()
            if spec.served_name is None and self.current is not None:
                spec = ModelSpec(spec.model_dir, self.current.served_name, spec.registry_version, spec.model_type)
            candidate = await load_runtime(spec, self.settings, self.engine_factory)
            try:
                smoke = await smoke_test(candidate, self.settings)
            except BaseException:
                await _quiet_shutdown(candidate.engine)
                raise
            previous, self.current = self.current, candidate  # the switch: one assignment
            if self.on_live is not None:
                self.on_live(candidate)
            if previous is not None:
                self._retire(previous)
            logger.info("model %s live (%s, %s)", candidate.fingerprint, candidate.spec.model_dir, candidate.engine_kind)
            return SwitchOutcome(candidate, previous, round(time.perf_counter() - start, 3), smoke)

    def _retire(self, runtime: ModelRuntime) -> None:
        self.draining.append(runtime)
        task = asyncio.get_running_loop().create_task(self._drain(runtime))
        self._drain_tasks.add(task)
        task.add_done_callback(self._drain_tasks.discard)

    async def _drain(self, runtime: ModelRuntime) -> None:
        try:
            if not await runtime.drained(self.settings.drain_timeout_s):
                logger.warning("model %s still had %d request(s) after %.0f s; shutting it down anyway",
                               runtime.fingerprint, runtime.in_flight, self.settings.drain_timeout_s)
            await _quiet_shutdown(runtime.engine)
        finally:
            if runtime in self.draining:
                self.draining.remove(runtime)

    async def shutdown(self) -> None:
        """Stop everything: cancel drains (their engines are shut down here) and the live engine."""
        for task in list(self._drain_tasks):
            task.cancel()
        for runtime in list(self.draining):
            await _quiet_shutdown(runtime.engine)
        self.draining.clear()
        if self.current is not None:
            await _quiet_shutdown(self.current.engine)
            self.current = None


def default_engine_factory(kind: str, config: EngineConfig) -> Engine:
    from openchat_core.serving.engines import create_engine

    return create_engine(kind, config)

