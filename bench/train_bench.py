"""Training throughput: padding-free multipack batches vs padded batches, same model, same data, one process.

    .venv/bin/python bench/train_bench.py [--steps 20] [--batch-max-len 1024 2048]

Data: realistic chat lengths (bench/length_mix.py: median ~100 tokens, long tail), capped at the
batch size, random token ids, ~60% of tokens supervised. Model: the `tiny-mistral` preset (stock
transformers Llama, 2 layers, hidden 128, the real 32k Mistral vocabulary, fp32), full train step
(forward, backward, AdamW) on CPU.

Modes (same sequences; each step holds the same real tokens):
- padded, full logits: a conventional trainer. Random order, sequences added until a batch holds as
  many real tokens as a packed step, padded to the batch's longest, attention mask, logits and loss
  computed at every position (padding included), as `model(..., labels=...)` does.
- packed, full logits: padding-free multipack rows (position ids restarting per sequence) with
  logits at every position: the padding-free effect alone (what OpenChat's trainer does).
- packed, trainer default: our trainer's step: multipack rows, `sdpa_varlen` attention (sdpa per
  packed sequence), logits only where the loss weight is non-zero.

Tokens/s counts real (non-padding) tokens. Modes alternate step by step and each keeps its median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.length_mix import realistic_lengths  # noqa: E402
from bench.results import write_section  # noqa: E402
from openchat_core.models.model_factory import build_random_model  # noqa: E402
from openchat_core.models.presets import MODEL_PRESETS  # noqa: E402
from openchat_core.templates.tokenizers import load_tokenizer  # noqa: E402
from openchat_core.training.data import PackedBatch  # noqa: E402
from openchat_core.training.loss import packed_forward, weighted_sums  # noqa: E402
from openchat_core.training.sampler import MultipackSampler  # noqa: E402


def make_sequences(n: int, cap: int, vocab: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for length in np.minimum(realistic_lengths(n, seed), cap):
        ids = rng.integers(3, vocab, int(length))
        weights = (rng.random(int(length)) < 0.6).astype(np.float32)
        out.append((ids, weights))
    return out


def packed_batches(seqs, cap: int, seed: int) -> list[list[int]]:
    lengths = np.array([len(s[0]) for s in seqs])
    plan = MultipackSampler(lengths, np.array([s[1].sum() for s in seqs], dtype=np.float64), cap, num_ranks=1, seed=seed).plan(0)
    return [list(b) for b in plan.rank_batches(0)]


def padded_batches(seqs, tokens_per_step: float, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(len(seqs))
    batches, current, real = [], [], 0
    for i in order:
        current.append(int(i))
        real += len(seqs[i][0])
        if real >= tokens_per_step:
            batches.append(current)
            current, real = [], 0
    return batches


def packed_step(model, optimizer, seqs, idx, full_logits: bool = False) -> int:
    ids = np.concatenate([seqs[i][0] for i in idx])
    pos = np.concatenate([np.arange(len(seqs[i][0])) for i in idx])
    weights = np.concatenate([seqs[i][1] for i in idx])
    labels = np.roll(ids, -1)
    batch = PackedBatch(torch.tensor(ids).unsqueeze(0), torch.tensor(pos).unsqueeze(0), torch.tensor(labels), torch.tensor(weights),
                        [len(seqs[i][0]) for i in idx])
    if full_logits:
        logits = packed_forward(model, batch).logits[0].float()
        ce = torch.nn.functional.cross_entropy(logits, batch.labels, reduction="none")
        ((batch.weights * ce).sum() / batch.weights.sum().clamp(min=1)).backward()
    else:
        loss, _, wsum = weighted_sums(model, batch)
        (loss / wsum.clamp(min=1)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return int(ids.size)


def padded_step(model, optimizer, seqs, idx) -> int:
    longest = max(len(seqs[i][0]) for i in idx)
    ids = torch.zeros(len(idx), longest, dtype=torch.long)
    mask = torch.zeros(len(idx), longest, dtype=torch.long)
    weights = torch.zeros(len(idx), longest)
    for row, i in enumerate(idx):
        n = len(seqs[i][0])
        ids[row, :n] = torch.tensor(seqs[i][0])
        mask[row, :n] = 1
        weights[row, :n] = torch.tensor(seqs[i][1])
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()  # every position, as labels=... does
    labels = torch.roll(ids, -1, dims=1)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    ((weights.reshape(-1) * ce).sum() / weights.sum().clamp(min=1)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return int(mask.sum())


def run(steps: int, cap: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    tok = load_tokenizer("preset:mistral")
    seqs = make_sequences(6000, cap, len(tok), seed)
    packed = packed_batches(seqs, cap, seed)
    tokens_per_step = float(np.mean([sum(len(seqs[i][0]) for i in b) for b in packed]))
    padded = padded_batches(seqs, tokens_per_step, seed)
    computed = float(np.mean([len(b) * max(len(seqs[i][0]) for i in b) for b in padded]))
    from functools import partial

    models = {name: build_random_model(MODEL_PRESETS["tiny-mistral"], tok, seed=seed, attn_implementation=attn)
              for name, attn in (("default", "sdpa_varlen"), ("packed_full", "sdpa"), ("padded", "sdpa"))}
    modes = [("default", packed_step, packed), ("packed_full", partial(packed_step, full_logits=True), packed),
             ("padded", padded_step, padded)]
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1) for name, m in models.items()}
    for name, fn, batches in modes * 2:  # warm-up
        fn(models[name], optimizers[name], seqs, batches[0])
    times: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    for s in range(steps):
        for name, fn, batches in modes:
            idx = batches[s % len(batches)]
            start = time.perf_counter()
            tokens = fn(models[name], optimizers[name], seqs, idx)
            times[name].append(tokens / (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()} | {
            "tokens_per_step": tokens_per_step, "padded_compute_per_step": computed,
            "padded_seqs_per_step": float(np.mean([len(b) for b in padded]))}


def main() -> None:
    from openchat_core.telemetry import telemetry_defaults

    os.environ.update(telemetry_defaults())  # process start: Ray, vLLM, MLflow and the hub client read it on import
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-max-len", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = ["| batch_max_len | real tokens/step | padded: seqs/step, computed tokens/step | padded, full logits (tokens/s) | "
            "packed, full logits | packed, trainer default | speed-up: packing alone | speed-up: trainer default |",
            "|---|---|---|---|---|---|---|---|"]
    for cap in args.batch_max_len:
        r = run(args.steps, cap, args.seed)
        rows.append(f"| {cap} | {r['tokens_per_step']:,.0f} | {r['padded_seqs_per_step']:.1f}, {r['padded_compute_per_step']:,.0f} "
                    f"| {r['padded']:,.0f} | {r['packed_full']:,.0f} | {r['default']:,.0f} | **{r['packed_full'] / r['padded']:.2f}×** "
                    f"| **{r['default'] / r['padded']:.2f}×** |")
        print(rows[-1], flush=True)
    body = (f"`python bench/train_bench.py --steps {args.steps}` — tiny-mistral (stock transformers Llama, fp32) on CPU ({os.cpu_count()} cores), "
            f"full train steps (forward, backward, AdamW), realistic lengths (bench/length_mix.py) capped at batch_max_len, "
            f"{args.steps} alternating steps per mode, median real tokens/s. Modes: see the script's docstring.\n\n" + "\n".join(rows))
    write_section("Training: packed vs padded", body)


if __name__ == "__main__":
    main()
