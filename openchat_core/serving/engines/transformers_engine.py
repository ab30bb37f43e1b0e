"""A continuous-batching engine on a stock Hugging Face causal LM, for machines without vLLM.

How it batches (continuous batching, not one request at a time):
- One background thread owns the model. Between two decode steps it admits waiting requests (up
  to `max_num_seqs` sequences in the batch), prefills each new prompt on its own (one forward
  pass, KV cache kept), and samples its first token.
- All running sequences then advance together, one token per decode step, through one batched
  forward pass over a shared KV cache. Sequences of different lengths are left-padded in the
  cache and masked; each row gets its own position ids, so the result equals unbatched
  generation (the tests check greedy output against `model.generate`).
- Finished or aborted rows leave the batch at the next step; the cache is re-packed only when
  the batch's membership changes, not every step.

Threads: torch runs with `threads` intra-op threads (default: half the cores, see
`default_threads`); the process is the engine's, so this process-wide setting is fine.

Each request has its own sampling parameters (temperature, top_p, presence/frequency penalties)
and, when it gives a seed, its own torch.Generator per choice (seed + choice index), so a seeded
request is reproducible whatever else is in the batch. Log-probabilities (raw model
log-probabilities, as vLLM returns them) are computed only for the rows that ask; prompt
log-probabilities make that prompt's prefill keep the logits of every position. Not implemented:
structured output (a 400 names the vLLM engine instead), chunked prefill (a long
prompt delays the running batch by one prefill), prefix caching, paged attention, beam search.

Works with transformers 5.19 (serving env) and 5.23 (pipeline env): it relies on
`DynamicCache(ddp_cache_data=...)`, `cache.layers[i].keys/.values` and `logits_to_keep`, which
both have.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from openchat_core.serving.engines.base import (
    Delta,
    EngineConfig,
    EngineError,
    EngineRequestError,
    EngineUnavailableError,
    SamplingOptions,
    TokenLogprob,
)
from openchat_core.serving.engines.text import ChoiceText

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("openchat_core.serving.transformers_engine")

SEED_MASK = (1 << 63) - 1


def default_threads() -> int:
    """Half the cores: decode steps are small, and OpenMP threads that must wait for a core (the event loop,
    tokenization, other processes) stall every op. Measured on a shared 2-core box, tiny model, 8 concurrent
    requests: 1 thread 1,909 tok/s, 2 threads 27 tok/s."""
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass
class EngineStats:
    """Counters the tests and /metrics-minded operators can read."""

    decode_steps: int = 0
    prefills: int = 0
    max_batch_rows: int = 0
    batched_steps: int = 0  # decode steps that advanced more than one sequence


@dataclass
class _Request:
    request_id: str
    prompt_ids: list[int]
    options: SamplingOptions
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    unfinished: int = 0
    prompt_logprobs: tuple[TokenLogprob | None, ...] = ()  # sent with the request's first deltas

    def deliver(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


@dataclass
class _Row:
    request: _Request
    index: int
    text: ChoiceText
    generator: torch.Generator | None
    position: int  # position id of `last_token` (= tokens already in the cache for this row)
    last_token: int = -1
    generated: int = 0
    counts: torch.Tensor | None = None  # generated-token counts, only when a penalty is set
    done: bool = False


@dataclass
class _Batch:
    """Running rows and their shared, left-padded KV cache."""

    rows: list[_Row] = field(default_factory=list)
    keys: list[torch.Tensor] = field(default_factory=list)  # per layer [B, H, L, D]
    values: list[torch.Tensor] = field(default_factory=list)
    mask: torch.Tensor | None = None  # [B, L] 1 = real token
    cache: Any = None  # DynamicCache built from keys/values, reused until membership changes

    def materialize(self) -> None:
        """Pull the tensors out of the live cache (it grew by one column per decode step)."""
        if self.cache is not None:
            self.keys = [layer.keys for layer in self.cache.layers]
            self.values = [layer.values for layer in self.cache.layers]
            self.cache = None

    def add(self, rows: list[_Row], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        import torch
        import torch.nn.functional as F

        if not rows:
            return
        self.materialize()
        new_len = keys[0].shape[-2]
        m = len(rows)
        new_keys = [k.expand(m, -1, -1, -1) for k in keys]
        new_values = [v.expand(m, -1, -1, -1) for v in values]
        new_mask = torch.ones(m, new_len, dtype=torch.long)
        if not self.rows:
            self.rows, self.keys, self.values, self.mask = list(rows), [k.contiguous() for k in new_keys], \
                [v.contiguous() for v in new_values], new_mask
            return
        assert self.mask is not None
        old_len = self.mask.shape[1]
        length = max(old_len, new_len)

        def left_pad(t: torch.Tensor, size: int) -> torch.Tensor:
            return F.pad(t, (0, 0, length - size, 0)) if size < length else t

        self.keys = [torch.cat([left_pad(a, old_len), left_pad(b, new_len)]) for a, b in zip(self.keys, new_keys)]
        self.values = [torch.cat([left_pad(a, old_len), left_pad(b, new_len)]) for a, b in zip(self.values, new_values)]
        self.mask = torch.cat([F.pad(self.mask, (length - old_len, 0)), F.pad(new_mask, (length - new_len, 0))])
        self.rows.extend(rows)

    def drop_finished(self) -> None:
        import torch

        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if len(keep) == len(self.rows):
            return
        self.materialize()
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.keys, self.values, self.mask = [], [], None
            return
        index = torch.tensor(keep)
        assert self.mask is not None
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0  # drop leading columns that are padding for every row
        self.mask = mask[:, start:]
        self.keys = [k.index_select(0, index)[:, :, start:] for k in self.keys]
        self.values = [v.index_select(0, index)[:, :, start:] for v in self.values]


def _top_logprobs(logprobs: torch.Tensor, token_ids: list[int], k: int) -> list[TokenLogprob]:
    """Row i of `logprobs` [N, vocab] scored for token_ids[i], with its k most likely tokens."""
    import torch

    own = logprobs.gather(1, torch.tensor(token_ids, dtype=torch.long).unsqueeze(1)).squeeze(1).tolist()
    if k > 0:
        values, indices = logprobs.topk(k, dim=-1)
        tops = [tuple(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        tops = [()] * len(token_ids)
    return [TokenLogprob(t, lp, top) for t, lp, top in zip(token_ids, own, tops)]


class TransformersEngine:
    name = "transformers"
    supports_structured_output = False

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.stats = EngineStats()
        self._ready = False
        self._cond = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._live: dict[str, _Request] = {}
        self._aborted: set[str] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._vocab_size = 0

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def max_context(self) -> int:
        return self.config.max_model_len

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._run, name="transformers-engine", daemon=True)
        self._thread.start()
        self._ready = True

    def _load(self) -> None:
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModelForCausalLM

        from openchat_core.models.model_factory import resolve_dtype

        from openchat_core.models.checkpoint import adapter_base_path, is_adapter_checkpoint

        model_dir = self.config.model_dir
        adapter = is_adapter_checkpoint(model_dir)
        self._model = AutoModelForCausalLM.from_pretrained(
            str(adapter_base_path(model_dir) if adapter else model_dir), dtype=resolve_dtype(self.config.dtype),
            attn_implementation="sdpa", local_files_only=True)
        if adapter:  # one LoRA adapter: folded into the base weights, so decoding costs what the base costs
            from peft import PeftModel

            self._model = PeftModel.from_pretrained(self._model, str(model_dir)).merge_and_unload()
        self._model.eval()
        self._vocab_size = int(self._model.get_output_embeddings().weight.shape[0])
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        torch.manual_seed(self.config.seed)
        torch.set_num_threads(self.config.threads or default_threads())

    async def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self._ready = False
        self._model = None

    async def abort(self, request_id: str) -> None:
        self._abort(request_id)

    def _abort(self, request_id: str) -> None:
        with self._cond:
            if request_id in self._live:
                self._aborted.add(request_id)
                self._cond.notify_all()

    async def generate(self, request_id: str, prompt_ids: list[int], options: SamplingOptions) -> AsyncIterator[Delta]:
        if not self._ready:
            raise EngineUnavailableError("the transformers engine is not running")
        if options.structured is not None:
            raise EngineRequestError("structured output (response_format json_object/json_schema) needs the vllm engine; "
                                     "this server runs the transformers engine")
        if options.adapter is not None:
            raise EngineRequestError("choosing a LoRA adapter per request needs the vllm engine; the transformers engine "
                                     "serves one adapter, folded into its weights")
        bad = [t for t in (*prompt_ids, *options.stop_token_ids) if not 0 <= t < self._vocab_size]
        if bad:
            raise EngineRequestError(f"token id(s) {bad[:5]} are outside the model's vocabulary of {self._vocab_size}")
        request = _Request(request_id, list(prompt_ids), options, asyncio.get_running_loop(), asyncio.Queue(),
                           unfinished=options.n)
        with self._cond:
            if self._stopping:
                raise EngineUnavailableError("the transformers engine is shutting down")
            if request_id in self._live:
                raise EngineRequestError(f"request id {request_id} is already running")
            self._live[request_id] = request
            self._pending.append(request)
            self._cond.notify_all()
        finished = 0
        try:
            while finished < options.n:
                items = await request.queue.get()
                if isinstance(items, BaseException):
                    raise items
                for delta in items:
                    finished += delta.finish_reason is not None
                    yield delta
        finally:
            if finished < options.n:
                self._abort(request_id)

    # ---- engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        batch = _Batch()
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._pending and not batch.rows and not self._aborted:
                        self._cond.wait()
                    if self._stopping:
                        break
                    aborted, self._aborted = self._aborted, set()
                    admitted = self._admit(len(batch.rows), aborted)
                for row in batch.rows:
                    if row.request.request_id in aborted:
                        row.done = True
                self._forget(aborted)
                try:
                    for request in admitted:
                        self._prefill(request, batch)
                    batch.drop_finished()
                    if batch.rows:
                        self._decode_step(batch)
                        batch.drop_finished()
                except Exception as exc:  # never let one bad step kill the engine thread
                    logger.exception("transformers engine step failed")
                    failed = {r.request.request_id: r.request for r in batch.rows} | {r.request_id: r for r in admitted}
                    for request in failed.values():
                        request.deliver(EngineError(f"generation failed: {exc}"))
                    self._forget(set(failed))
                    batch = _Batch()
        with self._cond:
            leftovers = list(self._live.values())
            self._live.clear()
            self._pending.clear()
        for request in leftovers:
            request.deliver(EngineUnavailableError("the transformers engine shut down"))

    def _admit(self, running: int, aborted: set[str]) -> list[_Request]:
        """Called with the lock held: waiting requests that fit in the batch (always one if it is empty)."""
        admitted: list[_Request] = []
        free = self.config.max_num_seqs - running
        while self._pending:
            request = self._pending[0]
            if request.request_id in aborted:
                self._pending.popleft()
                continue
            if request.options.n > free and (running or admitted):
                break
            self._pending.popleft()
            admitted.append(request)
            free -= request.options.n
        return admitted

    def _forget(self, request_ids: set[str]) -> None:
        if request_ids:
            with self._cond:
                for rid in request_ids:
                    self._live.pop(rid, None)

    def _prefill(self, request: _Request, batch: _Batch) -> None:
        import torch
        from transformers import DynamicCache

        self.stats.prefills += 1
        opts = request.options
        ids = torch.tensor([request.prompt_ids], dtype=torch.long)
        keep = 0 if opts.prompt_logprobs is not None else 1  # 0: the logits of every position
        out = self._model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=keep)
        logits = out.logits[:, -1, :].float()
        if opts.prompt_logprobs is not None:
            scored = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)
            request.prompt_logprobs = (None, *_top_logprobs(scored, request.prompt_ids[1:], opts.prompt_logprobs))
        rows = []
        for index in range(opts.n):
            generator = None
            if opts.temperature > 0:
                generator = torch.Generator()
                generator.manual_seed(((opts.seed if opts.seed is not None else secrets.randbits(63)) + index) & SEED_MASK)
            counts = torch.zeros(self._vocab_size) if (opts.presence_penalty or opts.frequency_penalty) else None
            rows.append(_Row(request, index, ChoiceText(self._tokenizer, request.prompt_ids, opts.stop), generator,
                             position=len(request.prompt_ids), counts=counts))
        logits = logits.expand(opts.n, -1)
        tokens = self._sample(logits, rows)
        self._advance(rows, tokens, self._logprobs(logits, rows, tokens))
        alive = [r for r in rows if not r.done]
        if alive:
            layers = out.past_key_values.layers
            batch.add(alive, [layer.keys for layer in layers], [layer.values for layer in layers])

    def _decode_step(self, batch: _Batch) -> None:
        import torch
        from transformers import DynamicCache

        assert batch.mask is not None
        if batch.cache is None:
            batch.cache = DynamicCache(ddp_cache_data=list(zip(batch.keys, batch.values)))
            batch.keys, batch.values = [], []
        rows = batch.rows
        input_ids = torch.tensor([[r.last_token] for r in rows], dtype=torch.long)
        positions = torch.tensor([[r.position] for r in rows], dtype=torch.long)
        batch.mask = torch.cat([batch.mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        out = self._model(input_ids=input_ids, attention_mask=batch.mask, position_ids=positions,
                          past_key_values=batch.cache, use_cache=True)
        batch.cache = out.past_key_values
        self.stats.decode_steps += 1
        self.stats.max_batch_rows = max(self.stats.max_batch_rows, len(rows))
        self.stats.batched_steps += len(rows) > 1
        for r in rows:
            r.position += 1
        logits = out.logits[:, -1, :].float()
        tokens = self._sample(logits, rows)
        self._advance(rows, tokens, self._logprobs(logits, rows, tokens))

    def _logprobs(self, logits: torch.Tensor, rows: list[_Row], tokens: list[int]) -> list[TokenLogprob | None]:
        """Raw log-probabilities of the sampled tokens, for the rows that asked (top k = the largest k asked)."""
        import torch

        wanted = [b for b, r in enumerate(rows) if r.request.options.logprobs is not None]
        out: list[TokenLogprob | None] = [None] * len(rows)
        if not wanted:
            return out
        index = torch.tensor(wanted)
        k = max(rows[b].request.options.logprobs or 0 for b in wanted)
        scored = _top_logprobs(torch.log_softmax(logits.index_select(0, index), dim=-1), [tokens[b] for b in wanted], k)
        for b, lp in zip(wanted, scored):
            own_k = rows[b].request.options.logprobs or 0
            out[b] = TokenLogprob(lp.token_id, lp.logprob, lp.top[:own_k])
        return out

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        import torch

        logits = logits.clone()
        for b, row in enumerate(rows):
            if row.counts is not None:
                opts = row.request.options
                logits[b] -= opts.presence_penalty * (row.counts > 0) + opts.frequency_penalty * row.counts
        temps = torch.tensor([r.request.options.temperature for r in rows])
        greedy = temps == 0
        tokens = logits.argmax(dim=-1)
        if not bool(greedy.all()):
            probs = torch.softmax(logits / temps.clamp(min=1e-5).unsqueeze(1), dim=-1)
            top_p = torch.tensor([r.request.options.top_p for r in rows])
            if bool((top_p < 1).any()):
                sorted_probs, order = probs.sort(dim=-1, descending=True)
                outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p.unsqueeze(1)
                sorted_probs = sorted_probs.masked_fill(outside, 0.0)
                probs = torch.zeros_like(probs).scatter(1, order, sorted_probs)
            for b, row in enumerate(rows):
                if not greedy[b]:
                    tokens[b] = torch.multinomial(probs[b], 1, generator=row.generator)[0]
        return tokens.tolist()

    def _advance(self, rows: list[_Row], tokens: list[int], logprobs: list[TokenLogprob | None]) -> None:
        """Account one new token per row, send the deltas (one message per request per step)."""
        out: dict[str, list[Delta]] = {}
        for row, token, logprob in zip(rows, tokens, logprobs):
            opts = row.request.options
            row.generated += 1
            row.last_token = token
            if row.counts is not None:
                row.counts[token] += 1
            if token in opts.stop_token_ids:
                delta = Delta(row.index, row.text.finish(), (token,), "stop")
            else:
                text, stopped = row.text.push(token)
                if stopped:
                    delta = Delta(row.index, text, (token,), "stop")
                elif row.generated >= opts.max_tokens or len(row.request.prompt_ids) + row.generated >= self.config.max_model_len:
                    delta = Delta(row.index, text + row.text.finish(), (token,), "length")
                else:
                    delta = Delta(row.index, text, (token,))
            if logprob is not None:
                delta = replace(delta, logprobs=(logprob,))
            if row.request.prompt_logprobs:
                delta = replace(delta, prompt_logprobs=row.request.prompt_logprobs)
                row.request.prompt_logprobs = ()
            if delta.finish_reason is not None:
                row.done = True
                row.request.unfinished -= 1
            out.setdefault(row.request.request_id, []).append(delta)
        finished: set[str] = set()
        for row in rows:
            deltas = out.pop(row.request.request_id, None)
            if deltas is not None:
                row.request.deliver(deltas)
                if row.request.unfinished == 0:
                    finished.add(row.request.request_id)
        self._forget(finished)
