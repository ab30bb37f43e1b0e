"""Training throughput: padding-free multipack batches vs length-grouped padded batches, same model, same data, one process.

    .venv/bin/python bench/train_bench.py [--steps 20] [--batch-max-len 1024 2048] [--no-write]

Data: realistic chat lengths (bench/length_mix.py: median ~100 tokens, long tail), capped at the
batch size, random token ids, ~60% of positions supervised; labels are shifted per sequence (the
last position of a sequence is never supervised), as in OpenChat's pretokenized data. Model: the
`tiny-mistral` preset (stock transformers Llama, 2 layers, hidden 128, the real 32k Mistral
vocabulary, fp32), full train step (forward, backward, AdamW) on CPU.

Modes (same sequences; each step holds about the same number of real tokens):
- padded, grouped (the fair baseline): batches grouped by length as transformers' `group_by_length`
  does (random megabatches of ~50 steps' worth of sequences, each sorted by length), cut at the same
  real-token budget as a packed step, padded to the batch's longest, attention mask. The LM head runs
  only at supervised positions: the decoder's hidden states are gathered where the loss weight is
  non-zero, then projected, so no logits at padding or unsupervised positions.
- packed, sdpa: multipack rows (position ids restarting per sequence, block-diagonal mask built by
  transformers) with the SAME supervised-only LM head (our `weighted_sums`: transformers'
  boolean `logits_to_keep`, i.e. the same gather before the LM head). packed / grouped is the
  effect of packing alone.
- packed, trainer default: our trainer's step: multipack rows, `sdpa_varlen` attention (sdpa per
  packed sequence), supervised-only logits.
- padded, random, full logits (the old baseline, kept for reference up to `--old-baseline-max`, 1024 by
  default: at 2048 its full [batch, longest, 32k] logits, their log-softmax and gradients take ~10 GB,
  more than the shared box has): random order, logits and loss at every position, padding included, as
  `model(..., labels=...)` does.

Tokens/s counts real (non-padding) tokens. Modes alternate step by step and each keeps its median,
so load on the shared machine hits every mode alike.
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
from openchat_core.training.loss import weighted_sums  # noqa: E402
from openchat_core.training.optimizer import adamw  # noqa: E402
from openchat_core.training.sampler import MultipackSampler  # noqa: E402


Seq = tuple[np.ndarray, np.ndarray, np.ndarray]  # input ids, labels shifted within the sequence, loss weights


def make_sequences(n: int, cap: int, vocab: int, seed: int) -> list[Seq]:
    rng = np.random.default_rng(seed)
    out = []
    for length in np.minimum(realistic_lengths(n, seed), cap):
        ids = rng.integers(3, vocab, int(length))
        labels = np.append(ids[1:], 0)
        weights = (rng.random(int(length)) < 0.6).astype(np.float32)
        weights[-1] = 0.0  # the last token has no next token inside its sequence
        out.append((ids, labels, weights))
    return out


def packed_batches(seqs: list[Seq], cap: int, seed: int) -> list[list[int]]:
    lengths = np.array([len(s[0]) for s in seqs])
    plan = MultipackSampler(lengths, np.ones(len(seqs)), cap, num_ranks=1, seed=seed).plan(0)
    return [list(b) for b in plan.rank_batches(0)]


def budget_batches(order, lengths: np.ndarray, tokens_per_step: float) -> list[list[int]]:
    """Cut `order` into consecutive batches, each closed once it holds `tokens_per_step` real tokens; the rest is a last, smaller batch."""
    batches, current, real = [], [], 0
    for i in order:
        current.append(int(i))
        real += int(lengths[i])
        if real >= tokens_per_step:
            batches.append(current)
            current, real = [], 0
    return batches + [current] if current else batches


def random_batches(seqs: list[Seq], tokens_per_step: float, seed: int) -> list[list[int]]:
    lengths = np.array([len(s[0]) for s in seqs])
    return budget_batches(np.random.default_rng(seed).permutation(len(seqs)), lengths, tokens_per_step)


def grouped_batches(seqs: list[Seq], tokens_per_step: float, seed: int, megabatch_steps: int = 50) -> list[list[int]]:
    """Length-grouped batches, as transformers' `group_by_length` (LengthGroupedSampler) builds them.

    A random permutation is split into megabatches of about `megabatch_steps` steps' worth of
    sequences (transformers uses 50 batches), each megabatch is sorted by length (longest first), and
    cut into batches at the real-token budget of a packed step. Batch order is then shuffled so the
    measured steps sample every length range, not only the first megabatch.
    """
    rng = np.random.default_rng(seed)
    lengths = np.array([len(s[0]) for s in seqs])
    per_step = max(1, round(tokens_per_step / float(lengths.mean())))
    order = rng.permutation(len(seqs))
    size = megabatch_steps * per_step
    batches: list[list[int]] = []
    for start in range(0, len(order), size):
        mega = order[start:start + size]
        batches += budget_batches(mega[np.argsort(-lengths[mega], kind="stable")], lengths, tokens_per_step)
    return [batches[i] for i in rng.permutation(len(batches))]


def optimizer_step(model, optimizer, loss: torch.Tensor) -> None:
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def packed_step(model, optimizer, seqs: list[Seq], idx: list[int]) -> int:
    """Our trainer's step: one packed row, logits only at supervised positions (`weighted_sums`)."""
    ids = np.concatenate([seqs[i][0] for i in idx])
    pos = np.concatenate([np.arange(len(seqs[i][0])) for i in idx])
    batch = PackedBatch(torch.tensor(ids).unsqueeze(0), torch.tensor(pos).unsqueeze(0),
                        torch.tensor(np.concatenate([seqs[i][1] for i in idx])),
                        torch.tensor(np.concatenate([seqs[i][2] for i in idx])), [len(seqs[i][0]) for i in idx])
    loss, _, wsum = weighted_sums(model, batch)
    optimizer_step(model, optimizer, loss / wsum.clamp(min=1))
    return int(ids.size)


def padded_tensors(seqs: list[Seq], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    longest = max(len(seqs[i][0]) for i in idx)
    ids = torch.zeros(len(idx), longest, dtype=torch.long)
    mask = torch.zeros(len(idx), longest, dtype=torch.long)
    labels = torch.zeros(len(idx), longest, dtype=torch.long)
    weights = torch.zeros(len(idx), longest)
    for row, i in enumerate(idx):
        n = len(seqs[i][0])
        ids[row, :n], labels[row, :n], weights[row, :n] = (torch.from_numpy(a) for a in seqs[i])
        mask[row, :n] = 1
    return ids, mask, labels, weights


def padded_step(model, optimizer, seqs: list[Seq], idx: list[int]) -> int:
    """Padded batch, LM head only at supervised positions: hidden states gathered where weight != 0, then projected."""
    ids, mask, labels, weights = padded_tensors(seqs, idx)
    hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    keep = weights != 0
    logits = model.lm_head(hidden[keep]).float()
    ce = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="none")
    optimizer_step(model, optimizer, (weights[keep] * ce).sum() / weights.sum().clamp(min=1))
    return int(mask.sum())


def padded_full_step(model, optimizer, seqs: list[Seq], idx: list[int]) -> int:
    """The old baseline: logits at every position (padding included), as `model(..., labels=...)` computes them."""
    ids, mask, labels, weights = padded_tensors(seqs, idx)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    optimizer_step(model, optimizer, (weights.reshape(-1) * ce).sum() / weights.sum().clamp(min=1))
    return int(mask.sum())


MODES = {  # name: (step, attention, batching)
    "default": (packed_step, "sdpa_varlen", "packed"),
    "packed": (packed_step, "sdpa", "packed"),
    "grouped": (padded_step, "sdpa", "grouped"),
    "random_full": (padded_full_step, "sdpa", "random"),
}


def run(steps: int, cap: int, seed: int, num_seqs: int = 6000, old_baseline: bool = True) -> dict[str, float]:
    torch.manual_seed(seed)
    tok = load_tokenizer("preset:mistral")
    seqs = make_sequences(num_seqs, cap, len(tok), seed)
    packed = packed_batches(seqs, cap, seed)
    tokens_per_step = float(np.mean([sum(len(seqs[i][0]) for i in b) for b in packed]))
    plans = {"packed": packed, "grouped": grouped_batches(seqs, tokens_per_step, seed),
             "random": random_batches(seqs, tokens_per_step, seed)}
    modes = {name: mode for name, mode in MODES.items() if old_baseline or name != "random_full"}
    models = {name: build_random_model(MODEL_PRESETS["tiny-mistral"], tok, seed=seed, attn_implementation=attn)
              for name, (_, attn, _) in modes.items()}
    optimizers = {name: adamw(m.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
                  for name, m in models.items()}
    for name, (fn, _, plan) in list(modes.items()) * 2:  # warm-up
        fn(models[name], optimizers[name], seqs, plans[plan][0])
    times: dict[str, list[float]] = {name: [] for name in modes}
    for s in range(steps):
        for name, (fn, _, plan) in modes.items():
            idx = plans[plan][s % len(plans[plan])]
            start = time.perf_counter()
            tokens = fn(models[name], optimizers[name], seqs, idx)
            times[name].append(tokens / (time.perf_counter() - start))
    out = {name: statistics.median(t) for name, t in times.items()} | {"tokens_per_step": tokens_per_step}
    for plan in ("grouped", "random"):
        batches = plans[plan]
        out[f"{plan}_seqs"] = float(np.mean([len(b) for b in batches]))
        out[f"{plan}_computed"] = float(np.mean([len(b) * max(len(seqs[i][0]) for i in b) for b in batches]))
    return out


def main() -> None:
    from openchat_core.telemetry import telemetry_defaults

    os.environ.update(telemetry_defaults())  # process start: Ray, vLLM, MLflow and the hub client read it on import
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-max-len", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-seqs", type=int, default=6000, help="sequences drawn from the length mix")
    parser.add_argument("--old-baseline-max", type=int, default=1024, help="run the old padded, random, full-logits mode up to this batch_max_len")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = ["| batch_max_len | real tokens/step | padded grouped: seqs/step, computed tokens/step | padded, grouped, supervised logits "
            "(tokens/s) | packed, sdpa | packed, trainer default | **packing alone** (packed sdpa / grouped) | trainer default / grouped "
            "| old baseline: padded, random, full logits (seqs/step, computed) | trainer default / old baseline |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for cap in args.batch_max_len:
        r = run(args.steps, cap, args.seed, args.num_seqs, old_baseline=cap <= args.old_baseline_max)
        old = (f"{r['random_full']:,.0f} ({r['random_seqs']:.1f}, {r['random_computed']:,.0f}) | {r['default'] / r['random_full']:.2f}×"
               if "random_full" in r else "not run (memory) | –")
        rows.append(f"| {cap} | {r['tokens_per_step']:,.0f} | {r['grouped_seqs']:.1f}, {r['grouped_computed']:,.0f} | {r['grouped']:,.0f} "
                    f"| {r['packed']:,.0f} | {r['default']:,.0f} | **{r['packed'] / r['grouped']:.2f}×** | **{r['default'] / r['grouped']:.2f}×** "
                    f"| {old} |")
        print(rows[-1], flush=True)
    body = (f"`python bench/train_bench.py --steps {args.steps}` — tiny-mistral (stock transformers Llama, fp32) on CPU ({os.cpu_count()} cores), "
            f"full train steps (forward, backward, AdamW), realistic lengths (bench/length_mix.py) capped at batch_max_len, "
            f"{args.steps} alternating steps per mode, median real tokens/s. Modes: see the script's docstring.\n\n" + "\n".join(rows))
    if not args.no_write:
        write_section("Training: packed vs padded", body)


if __name__ == "__main__":
    main()
