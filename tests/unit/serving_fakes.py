"""Test doubles for the serving unit tests: an in-memory engine and tokenizer-only checkpoints.

`FakeEngine` implements the engine interface for real (token ids in, incremental text out via
the same `ChoiceText` the transformers engine uses, stop ids, stop strings, max_tokens, n,
abort), but its "model" just spells out a fixed reply. Everything it was asked is recorded, so
tests can assert on the exact prompt ids and sampling options the app sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_core.serving.engines.base import (
    Delta,
    EngineConfig,
    EngineRequestError,
    EngineUnavailableError,
    LoraAdapter,
    SamplingOptions,
    TokenLogprob,
)
from openchat_core.serving.engines.text import ChoiceText

REPLY = "Hello there, friend"


def fake_logprob(position: int, token_id: int, k: int) -> TokenLogprob:
    """What the fake "model" scores `token_id` at `position`: -0.5 - position/10, with k runner-ups below it."""
    own = -0.5 - position / 10
    return TokenLogprob(token_id, own, tuple((token_id + j, own - j) for j in range(k)))


def make_tokenizer_checkpoint(folder: Path, tokenizer: Any, model_type: str = "openchat_3.5",
                              max_positions: int = 8192) -> Path:
    """A checkpoint folder with everything the app reads, but no weights (the fake engine needs none)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": max_positions}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [32000, 2]}))
    (folder / "openchat.json").write_text(json.dumps({"model_type": model_type}))
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)  # valid, no tensors
    return folder


def make_adapter_checkpoint(folder: Path, tokenizer: Any, base: Path, *, rank: int = 8,
                            modules_to_save: list[str] | None = None) -> Path:
    """A LoRA checkpoint folder on `base` as the trainer writes it (adapter config, tokenizer, openchat.json), no tensors."""
    make_tokenizer_checkpoint(folder, tokenizer)
    (folder / "config.json").unlink()
    (folder / "model.safetensors").rename(folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 16, "base_model_name_or_path": str(base),
                                                           "modules_to_save": modules_to_save, "peft_type": "LORA"}))
    (folder / "openchat.json").write_text(json.dumps({"model_type": "openchat_3.5",
                                                      "adapter": {"type": "lora", "base_model": str(base), "r": rank}}))
    return folder


@dataclass
class Call:
    request_id: str
    prompt_ids: list[int]
    options: SamplingOptions


class FakeEngine:
    name = "fake"
    supports_structured_output = True  # records the constraint; `structured=False` plays the transformers engine

    def __init__(self, config: EngineConfig, *, reply: Callable[[int], str] | str = REPLY, delay: float = 0.0,
                 fail_start: Exception | None = None, fail_generate: Exception | None = None,
                 tokens_before_failure: int = 0, silent: bool = False, fail_smoke: bool = False,
                 structured: bool = True) -> None:
        self.config = config
        self.reply = reply
        self.delay = delay
        self.fail_start = fail_start
        self.fail_generate = fail_generate
        self.tokens_before_failure = tokens_before_failure
        self.silent = silent  # finish without producing a token (a broken model)
        self.fail_smoke = fail_smoke  # apply fail_generate/silent to the smoke test too (else only to clients)
        self.supports_structured_output = structured
        self.calls: list[Call] = []
        self.aborted: list[str] = []
        self.started = False
        self.shut_down = False
        self.healthy = True
        self.active: set[str] = set()
        self.tokenizer: Any = None
        self.adapters: dict[int, LoraAdapter] = {}  # loaded LoRA adapters by id
        self.removed: list[LoraAdapter] = []

    @property
    def supports_adapters(self) -> bool:
        return self.config.max_lora_rank is not None

    @property
    def max_lora_rank(self) -> int | None:
        return self.config.max_lora_rank

    async def load_adapter(self, name: str, path: Path, rank: int) -> LoraAdapter:
        """Like vLLM's: one id per load; the "model" then answers `from NAME` for requests with that adapter."""
        adapter = LoraAdapter(name, path, len(self.adapters) + len(self.removed) + 1, rank)
        self.adapters[adapter.adapter_id] = adapter
        return adapter

    async def remove_adapter(self, adapter: LoraAdapter) -> None:
        self.removed.append(self.adapters.pop(adapter.adapter_id))

    @property
    def ready(self) -> bool:
        return self.started and not self.shut_down and self.healthy

    @property
    def max_context(self) -> int:
        return self.config.max_model_len

    async def start(self) -> None:
        if self.fail_start is not None:
            raise self.fail_start
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(self.config.model_dir / "tokenizer.json"))
        self.started = True

    async def shutdown(self) -> None:
        self.shut_down = True

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.active.discard(request_id)

    def reply_for(self, index: int) -> str:
        return self.reply(index) if callable(self.reply) else self.reply

    async def generate(self, request_id: str, prompt_ids: list[int], options: SamplingOptions) -> AsyncIterator[Delta]:
        if not self.ready:
            raise EngineUnavailableError("fake engine is not running")
        if options.structured is not None and not self.supports_structured_output:
            raise EngineRequestError("structured output is not supported by this engine")
        self.calls.append(Call(request_id, list(prompt_ids), options))
        self.active.add(request_id)
        faulty = self.fail_smoke or not request_id.startswith("smoke-")
        try:
            if self.silent and faulty:
                for index in range(options.n):
                    yield Delta(index, "", (), "stop")
                return
            choices = []
            if options.adapter is not None and options.adapter.adapter_id not in self.adapters:
                raise EngineRequestError(f"adapter {options.adapter.name} is not loaded")
            for index in range(options.n):
                reply = f"from {options.adapter.name}" if options.adapter is not None else self.reply_for(index)
                ids = self.tokenizer.encode(reply, add_special_tokens=False).ids
                eot = options.stop_token_ids[:1]
                choices.append((index, [*ids, *eot], ChoiceText(self.tokenizer, prompt_ids, options.stop)))
            produced = [0] * options.n
            done = [False] * options.n
            step = 0
            prompt_lps: tuple[TokenLogprob | None, ...] = ()
            if options.prompt_logprobs is not None:
                k = options.prompt_logprobs
                prompt_lps = (None, *(fake_logprob(i, t, k) for i, t in enumerate(prompt_ids[1:], start=1)))

            def delta(index: int, text: str, token: int, reason: Any = None) -> Delta:
                nonlocal prompt_lps
                lps = () if options.logprobs is None else (
                    fake_logprob(len(prompt_ids) + produced[index] - 1, token, options.logprobs),)
                out = Delta(index, text, (token,), reason, logprobs=lps, prompt_logprobs=prompt_lps)
                prompt_lps = ()
                return out

            while not all(done):
                for index, ids, text in choices:
                    if done[index]:
                        continue
                    if faulty and self.fail_generate is not None and step >= self.tokens_before_failure:
                        raise self.fail_generate
                    if request_id not in self.active:
                        return
                    token = ids[produced[index]]
                    produced[index] += 1
                    if token in options.stop_token_ids:
                        done[index] = True
                        yield delta(index, text.finish(), token, "stop")
                        continue
                    new, stopped = text.push(token)
                    if stopped:
                        done[index] = True
                        yield delta(index, new, token, "stop")
                    elif produced[index] >= options.max_tokens or produced[index] >= len(ids):
                        done[index] = True
                        yield delta(index, new + text.finish(), token, "length")
                    else:
                        yield delta(index, new, token)
                step += 1
                await asyncio.sleep(self.delay)
        finally:
            self.active.discard(request_id)


@dataclass
class FakeEngineFactory:
    """`engine_factory` for build_app: builds FakeEngines, per-folder options, and remembers them."""

    default: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    engines: list[FakeEngine] = field(default_factory=list)

    def __call__(self, kind: str, config: EngineConfig) -> FakeEngine:
        options = {**self.default, **self.per_model.get(config.model_dir.name, {})}
        engine = FakeEngine(config, **options)
        self.engines.append(engine)
        return engine

    def for_model(self, name: str) -> list[FakeEngine]:
        return [e for e in self.engines if e.config.model_dir.name == name]
