"""LoRA vs full fine-tuning on a real small model: SmolLM2-135M (preset:smollm2-135m, fp32), CPU, one run.

    .venv/bin/python bench/lora_bench.py [--steps 12] [--batch-max-len 1024] [--eval-rows 200]

Data: the demo conversations (C-RLFT weights GPT4 Correct=1.0, GPT3=0.1), pretokenized with the
chatml_8192 template on SmolLM2's tokenizer. Every variant runs the trainer's step (multipack rows,
`sdpa_varlen`, weighted loss over the step's num_seqs, torch AdamW with the trainer's betas/eps,
clipping 1.0) on the same batches in the same order, for the same number of steps, then scores the
same held-out rows with the trainer's held-out loss. The baseline is full fine-tuning.

Each variant runs in its own child process so its peak RSS (ru_maxrss) is its own; the variants run
one after another on the same machine. Learning rates are each method's usual one (full 5e-5,
LoRA 5e-4, alpha = 2r, all linear layers). Tokens/s counts real tokens, median over steps after
the first.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.demo_tokens import pretokenized_demo  # noqa: E402

VARIANTS = {"full": None, "lora r=8": 8, "lora r=16": 16}
BASE = "preset:smollm2-135m"


def run_variant(name: str, tokens: str, eval_tokens: str, steps: int, batch_max_len: int, eval_rows: int) -> dict:
    import torch

    from openchat_core.training.optimizer import adamw
    from openchat_core.training.settings import TrainConfig
    from openchat_core.models.adapters import apply_lora, trainable_parameter_count
    from openchat_core.models.model_factory import load_base_model, local_model_dir, parameter_count
    from openchat_core.training.data import TokenDataset, sequential_batches
    from openchat_core.training.loss import weighted_sums
    from openchat_core.training.sampler import MultipackSampler

    torch.manual_seed(0)
    model, _ = load_base_model(BASE, packed=True)
    model.config.use_cache = False
    total = parameter_count(model)
    r = VARIANTS[name]
    if r is not None:
        model = apply_lora(model, TrainConfig(adapter="lora", lora_r=r, lora_alpha=2 * r, lora_dropout=0.0),
                           base_path=local_model_dir(BASE))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(trainable, lr=5e-5 if r is None else 5e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    data = TokenDataset(tokens, max_len=batch_max_len)
    plan = MultipackSampler(data.lengths, data.num_seqs, batch_max_len, num_ranks=1, seed=0).plan(0)
    batches = plan.rank_batches(0)[:steps]
    model.train()
    rates, losses = [], []
    for i, indices in enumerate(batches):
        batch = data.batch(indices)
        started = time.perf_counter()
        loss_sum, _, _ = weighted_sums(model, batch)
        (loss_sum / float(plan.global_num_seqs[i])).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rates.append(batch.num_tokens / (time.perf_counter() - started))
        losses.append(loss_sum.item() / float(plan.global_num_seqs[i]))
    held = TokenDataset(eval_tokens, max_len=batch_max_len, overlong="truncate")
    model.eval()
    loss = seqs = 0.0
    with torch.no_grad():
        for indices in sequential_batches(held.lengths, batch_max_len):
            indices = [j for j in indices if j < eval_rows]
            if indices:
                loss += weighted_sums(model, held.batch(indices))[0].item()
                seqs += float(held.num_seqs[indices].sum())
    return {"variant": name, "tokens_per_s": statistics.median(rates[1:] or rates), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable": trainable_parameter_count(model), "total": total, "first_loss": losses[0], "heldout_loss": loss / seqs,
            "steps": len(batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-max-len", type=int, default=1024)
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    parser.add_argument("--eval-tokens", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    if args.variant:  # child: one variant, one JSON line
        print(json.dumps(run_variant(args.variant, args.tokens, args.eval_tokens, args.steps, args.batch_max_len, args.eval_rows)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tokens, eval_tokens = pretokenized_demo(Path(tmp), BASE.removeprefix("preset:"))
        results = []
        for name in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--variant", name, "--tokens", str(tokens), "--eval-tokens", str(eval_tokens),
                                  "--steps", str(args.steps), "--batch-max-len", str(args.batch_max_len), "--eval-rows", str(args.eval_rows)],
                                 check=True, capture_output=True, text=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)
    full = results[0]
    rows = ["| variant | trainable params | share | tokens/s | vs full | peak RSS MiB | vs full | loss step 1 | held-out loss after "
            f"{full['steps']} steps |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['variant']} | {r['trainable']:,} | {r['trainable'] / r['total']:.2%} | {r['tokens_per_s']:,.0f} | "
                    f"**{r['tokens_per_s'] / full['tokens_per_s']:.2f}×** | {r['peak_rss_mib']:,.0f} | {r['peak_rss_mib'] / full['peak_rss_mib']:.2f}× | "
                    f"{r['first_loss']:.4f} | {r['heldout_loss']:.4f} |")
    body = (f"`python bench/lora_bench.py --steps {args.steps} --batch-max-len {args.batch_max_len} --eval-rows {args.eval_rows}`: "
            f"SmolLM2-135M (fp32) on CPU, demo data pretokenized for chatml_8192, the trainer's packed step for each variant on the same "
            f"batches; held-out loss on the first {args.eval_rows} eval rows. Full: lr 5e-5; LoRA: lr 5e-4, alpha 2r, all linear layers. "
            f"Each variant in its own process (peak RSS is its own).\n\n" + "\n".join(rows))
    print(body)
    if not args.no_write:
        from bench.results import write_section

        write_section("LoRA vs full fine-tuning", body)


if __name__ == "__main__":
    main()
