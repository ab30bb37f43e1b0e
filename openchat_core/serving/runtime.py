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

LoRA (vLLM): a runtime may answer with a LoRA adapter on its engine's base: the checkpoint's own
(`--model <adapter checkpoint>`: `default_adapter`) and the `--lora NAME=PATH` ones, each chosen by
the request's `model`. A candidate that is an adapter on the base the live engine already holds is
loaded into that engine (step 1 becomes "add the adapter"; the base is not reloaded,
`reused_engine`), and the old runtime's drain then frees only its adapter, never the shared engine.
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
from typing import TYPE_CHECKING, Any

from openchat_core.serving.engines.base import Engine, EngineConfig, LoraAdapter, SamplingOptions
from openchat_core.serving.protocol import LoadedModelInfo, ModelCard, SmokeResult
from openchat_core.serving.settings import ServeSettings
from openchat_core.templates.model_types import ModelType

if TYPE_CHECKING:
    from openchat_core.models.adapters import AdapterInfo

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
    engine_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # shared by runtimes on one engine
    base_dir: Path | None = None  # the base folder the engine holds, when LoRA runs on it
    default_adapter: LoraAdapter | None = None  # answers the served names (an adapter checkpoint served on vLLM)
    adapters: dict[str, LoraAdapter] = field(default_factory=dict)  # --lora NAME=PATH, chosen by `model: NAME`
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
    def served_names(self) -> tuple[str, ...]:
        """The names of the checkpoint served: served name, model type name, its aliases."""
        return tuple(dict.fromkeys((self.served_name, self.model_type.name, *self.model_type.aliases)))

    @property
    def names(self) -> tuple[str, ...]:
        """Every `model` value a request may use: the served names, then the --lora adapter names."""
        return tuple(dict.fromkeys((*self.served_names, *self.adapters)))

    def adapter_for(self, name: str | None) -> LoraAdapter | None:
        """The LoRA adapter that answers a request for `name` (None: the base alone)."""
        if name is not None and name in self.adapters and name not in self.served_names:
            return self.adapters[name]
        return self.default_adapter

    def answering_name(self, adapter: LoraAdapter | None) -> str:
        """The `model` a response reports: the --lora adapter that answered, else the served name."""
        return adapter.name if adapter is not None and adapter != self.default_adapter else self.served_name

    def uses(self, adapter: LoraAdapter) -> bool:
        return adapter == self.default_adapter or adapter in self.adapters.values()

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
                               engine=self.engine_kind, max_context=self.max_context, engine_id=self.engine_id,
                               base_model=str(self.base_dir) if self.base_dir else None, adapters=list(self.adapters))

    def cards(self) -> list[ModelCard]:
        served = [ModelCard(id=name, created=self.created, root=self.served_name, model_type=self.model_type.name,
                            registry_version=self.registry_version, max_context=self.max_context)
                  for name in self.served_names]
        return served + [ModelCard(id=name, created=self.created, root=name, parent=self.served_name,
                                   model_type=self.model_type.name, max_context=self.max_context)
                         for name in self.adapters if name not in self.served_names]


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


@dataclass(frozen=True)
class LoraPlan:
    """The adapters a vLLM runtime applies per request on one base: the checkpoint's own, and the --lora ones."""

    base_dir: Path
    own: AdapterInfo | None               # the served checkpoint, when it is an adapter
    named: tuple[tuple[str, AdapterInfo], ...]

    @property
    def max_rank(self) -> int:
        return max(info.rank for info in (*([self.own] if self.own else []), *(i for _, i in self.named)))


def lora_plan(model_dir: Path, settings: ServeSettings) -> LoraPlan | None:
    """Check the served adapter and the `--lora` ones against the engine and the served base; ModelLoadError says why not."""
    from openchat_core.models.adapters import adapter_info, per_request_lora_problem
    from openchat_core.models.checkpoint import is_adapter_checkpoint

    named_paths = settings.lora_adapters()
    own_is_adapter = is_adapter_checkpoint(model_dir)
    if settings.engine != "vllm":
        if named_paths:
            raise ModelLoadError("load", f"--lora {settings.lora[0]}: several adapters on one base need --engine vllm; the "
                                         f"{settings.engine} engine serves one adapter (give it as --model)")
        return None
    if not (own_is_adapter or named_paths):
        return None

    def read(path: Path, option: str) -> AdapterInfo:
        try:
            info = adapter_info(path)
        except (FileNotFoundError, ValueError) as exc:
            raise ModelLoadError("load", f"{option}: {exc}") from exc
        problem = per_request_lora_problem(info)
        if problem is not None:
            raise ModelLoadError("load", f"{option}: {problem}")
        return info

    own = read(model_dir, f"--model {model_dir}") if own_is_adapter else None
    base_dir = own.base if own is not None else model_dir
    named = []
    for (name, path), value in zip(named_paths, settings.lora):
        info = read(path.resolve(), f"--lora {value}")
        if info.base != base_dir:
            raise ModelLoadError("load", f"--lora {value}: this adapter was trained on {info.base}, but the served base is "
                                         f"{base_dir}; serve adapters of one base together (another server for the other base)")
        named.append((name, info))
    return LoraPlan(base_dir, own, tuple(named))


async def load_runtime(spec: ModelSpec, settings: ServeSettings, engine_factory: EngineFactory) -> ModelRuntime:
    """Load tokenizer/template and start an engine for `spec`; raises `ModelLoadError` with the reason."""
    kind = settings.engine
    model_dir = spec.model_dir.expanduser().resolve()
    spec = ModelSpec(model_dir, spec.served_name, spec.registry_version, spec.model_type)
    from openchat_core.models.checkpoint import is_adapter_checkpoint

    if not ((model_dir / "config.json").is_file() or is_adapter_checkpoint(model_dir)):
        raise ModelLoadError("load", f"{model_dir} is not a model folder (no config.json or LoRA adapter_config.json)")
    plan = lora_plan(model_dir, settings)
    model_type, template, special_tokens, tokenizer, stop_ids = await _checkpoint_text(model_dir, spec)
    config = EngineConfig(model_dir=plan.base_dir if plan else model_dir,
                          max_model_len=context_length(model_dir, model_type, settings.max_model_len),
                          dtype=settings.resolved_dtype(),
                          max_num_seqs=settings.max_num_seqs, seed=settings.seed, kv_cache_gib=settings.kv_cache_gib,
                          enforce_eager=settings.enforce_eager, threads=settings.torch_threads,
                          max_lora_rank=max(settings.max_lora_rank or 0, plan.max_rank) if plan else None,
                          max_loras=settings.max_loras or (len(plan.named) + (plan.own is not None) + 1 if plan else 1))
    engine = engine_factory(kind, config)
    try:
        await engine.start()
        served = spec.served_name or model_type.name
        own, named = None, {}
        if plan is not None:
            if plan.own is not None:
                own = await engine.load_adapter(served, plan.own.path, plan.own.rank)  # type: ignore[attr-defined]
            for name, info in plan.named:
                named[name] = await engine.load_adapter(name, info.path, info.rank)  # type: ignore[attr-defined]
    except Exception as exc:
        await _quiet_shutdown(engine)
        raise ModelLoadError("load", f"the {kind} engine failed to start on {model_dir}: {type(exc).__name__}: {exc}") from exc
    return ModelRuntime(spec=spec, engine=engine, engine_kind=kind, template=template, model_type=model_type,
                        served_name=served, stop_token_ids=stop_ids, special_tokens=special_tokens,
                        tokenizer=tokenizer, base_dir=plan.base_dir if plan else None, default_adapter=own, adapters=named)


async def _checkpoint_text(model_dir: Path, spec: ModelSpec) -> tuple[ModelType, Any, tuple[str, ...], Any, tuple[int, ...]]:
    """A checkpoint's model type, template, special tokens, tokenizer and stop ids (weights checked, not loaded)."""
    from openchat_core.models.checkpoint import checkpoint_model_type

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
    return model_type, template, special_tokens, tokenizer, stop_ids


async def adapter_runtime(spec: ModelSpec, live: ModelRuntime) -> ModelRuntime | None:
    """`spec` as a new runtime on `live`'s engine, when it is a LoRA adapter on the base that engine holds; else None.

    Only the adapter is loaded (and its tokenizer and template read); the --lora adapters carry over.
    None (a full load is needed) when the engine has no LoRA, the base differs, or the rank is above
    the engine's max_lora_rank; ModelLoadError when the adapter cannot run per request at all.
    """
    from openchat_core.models.adapters import adapter_info, per_request_lora_problem
    from openchat_core.models.checkpoint import is_adapter_checkpoint

    model_dir = spec.model_dir.expanduser().resolve()
    engine = live.engine
    if live.base_dir is None or not getattr(engine, "supports_adapters", False) or not is_adapter_checkpoint(model_dir):
        return None
    try:
        info = adapter_info(model_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise ModelLoadError("load", str(exc)) from exc
    limit = getattr(engine, "max_lora_rank", None)
    if info.base != live.base_dir or (limit is not None and info.rank > limit):
        logger.info("adapter %s (base %s, rank %d) does not fit the live engine (base %s, max rank %s): loading it anew",
                    model_dir, info.base, info.rank, live.base_dir, limit)
        return None
    problem = per_request_lora_problem(info)
    if problem is not None:
        raise ModelLoadError("load", problem)
    spec = ModelSpec(model_dir, spec.served_name, spec.registry_version, spec.model_type)
    model_type, template, special_tokens, tokenizer, stop_ids = await _checkpoint_text(model_dir, spec)
    served = spec.served_name or model_type.name
    try:
        adapter = await engine.load_adapter(served, model_dir, info.rank)  # type: ignore[attr-defined]
    except Exception as exc:
        raise ModelLoadError("load", f"could not add the adapter to the running engine: {exc}") from exc
    return ModelRuntime(spec=spec, engine=engine, engine_kind=live.engine_kind, template=template, model_type=model_type,
                        served_name=served, stop_token_ids=stop_ids, special_tokens=special_tokens, tokenizer=tokenizer,
                        engine_id=live.engine_id, base_dir=live.base_dir, default_adapter=adapter,
                        adapters=dict(live.adapters))


async def _quiet_shutdown(engine: Engine) -> None:
    try:
        await engine.shutdown()
    except Exception:
        logger.warning("engine shutdown failed", exc_info=True)


async def smoke_test(runtime: ModelRuntime, settings: ServeSettings) -> SmokeResult:
    """One short greedy completion; it must yield at least one token and finish. Raises ModelLoadError."""
    prompt = runtime.template.prompt_ids([{"role": "user", "content": settings.smoke_prompt}])
    max_tokens = max(1, min(settings.smoke_max_tokens, runtime.max_context - len(prompt)))
    options = SamplingOptions(max_tokens=max_tokens, stop_token_ids=runtime.stop_token_ids, temperature=0.0, stream=False,
                              adapter=runtime.default_adapter)
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
    reused_engine: bool = False  # a LoRA adapter added to the live engine; the base was not reloaded


class ModelManager:
    """Owns the live runtime; see the module docstring for the switch protocol."""

    def __init__(self, settings: ServeSettings, engine_factory: EngineFactory,
                 on_live: Callable[[ModelRuntime], None] | None = None) -> None:
        self.settings = settings
        self.engine_factory = engine_factory
        self.on_live = on_live
        self.current: ModelRuntime | None = None
        self.draining: list[ModelRuntime] = []
        self.engine_starts = 0  # engines started (base weights loaded): 1 + full reloads
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
            candidate = await adapter_runtime(spec, self.current) if self.current is not None else None
            reused = candidate is not None
            if candidate is None:
                candidate = await load_runtime(spec, self.settings, self.engine_factory)
                self.engine_starts += 1
            try:
                smoke = await smoke_test(candidate, self.settings)
            except BaseException:
                await self._discard(candidate)
                raise
            previous, self.current = self.current, candidate  # the switch: one assignment
            if self.on_live is not None:
                self.on_live(candidate)
            if previous is not None:
                self._retire(previous)
            if reused:
                logger.info("model %s live: LoRA adapter %s added to the running engine %s (base %s not reloaded)",
                            candidate.fingerprint, candidate.spec.model_dir, candidate.engine_id, candidate.base_dir)
            else:
                logger.info("model %s live (%s, %s, engine %s)", candidate.fingerprint, candidate.spec.model_dir,
                            candidate.engine_kind, candidate.engine_id)
            return SwitchOutcome(candidate, previous, round(time.perf_counter() - start, 3), smoke, reused)

    def _others(self, runtime: ModelRuntime) -> list[ModelRuntime]:
        return [r for r in (self.current, *self.draining) if r is not None and r is not runtime]

    async def _discard(self, runtime: ModelRuntime) -> None:
        """Free what only `runtime` holds: its engine, or, on an engine other runtimes share, its own adapter."""
        sharing = [r for r in self._others(runtime) if r.engine is runtime.engine]
        if not sharing:
            await _quiet_shutdown(runtime.engine)
            return
        adapters = [runtime.default_adapter, *runtime.adapters.values()]
        for adapter in adapters:
            if adapter is not None and not any(r.uses(adapter) for r in sharing):
                await runtime.engine.remove_adapter(adapter)  # type: ignore[attr-defined]

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
            await self._discard(runtime)
        finally:
            if runtime in self.draining:
                self.draining.remove(runtime)

    async def shutdown(self) -> None:
        """Stop everything: cancel drains (their engines are shut down here) and the live engine."""
        for task in list(self._drain_tasks):
            task.cancel()
        engines = {id(r.engine): r.engine for r in self.draining}
        for engine in engines.values():
            if self.current is None or engine is not self.current.engine:
                await _quiet_shutdown(engine)
        self.draining.clear()
        if self.current is not None:
            await _quiet_shutdown(self.current.engine)
            self.current = None


def default_engine_factory(kind: str, config: EngineConfig) -> Engine:
    from openchat_core.serving.engines import create_engine

    return create_engine(kind, config)

