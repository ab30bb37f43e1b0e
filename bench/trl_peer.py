"""A peer trainer: our packed training step vs TRL's `SFTTrainer` (packing "bfd", padding-free), same model, data and optimizer, one run.

    .venv/bin/python bench/trl_peer.py [--model smollm2-135m] [--data synthetic] [--rows 48] [--batch-max-len 1024] [--profile] [--no-write]

Both sides train one epoch over the same sequences, starting from the same weights, on CPU in fp32:
- Data: `synthetic` draws realistic chat lengths (bench/length_mix.py, capped at batch_max_len) with
  random token ids and ~60% of positions supervised, as bench/train_bench.py does; `demo` is the demo
  conversations pretokenized for the preset's template (real text, but short: median ~16 tokens).
  Both sides get the same supervised tokens: ours a 0/1 loss weight on the shifted label, TRL a
  pretokenized `labels` column (-100 where unsupervised), which TRL keeps as is.
- Tokens per step: one packed row of at most `batch_max_len` tokens per step on both sides (ours:
  the trainer's multipack sampler; TRL: `packing=True, packing_strategy="bfd", max_length=batch_max_len`,
  `per_device_train_batch_size=1`, which turns on padding-free: no attention mask, position ids restart
  per sequence). Each side covers every sequence exactly once, so both train on the same supervised
  tokens; the step counts can differ by a bin if the two packers differ (both are reported).
- Objective: mean cross-entropy over the step's supervised tokens on both sides (TRL's loss; our
  trainer's own normalisation by num_seqs would only rescale it). AdamW (betas 0.9/0.95, eps 1e-5,
  weight decay 0.1) with torch's fused kernel on both sides (TRL's default, `adamw_torch_fused`; our
  trainer's `training/optimizer.py`), constant learning rate, gradient clipping at 1.0, no gradient checkpointing.
- Ours: the trainer's step (its forward and loss, `weighted_sums`: logits only at supervised positions;
  the default packed attention on CPU, `sdpa_varlen`, or `--ours-attn sdpa` to give both sides the same
  attention; the trainer's fused AdamW without the DeepSpeed engine around it, as bench/lora_bench.py does). TRL: its own trainer loop and loss (its fused LM head scores every
  position in chunks on CPU, supervised-only on CUDA with Triton), the model loaded with `sdpa`
  (transformers builds the block-diagonal mask from the restarting position ids).

Tokens/s counts real tokens (no padding exists on either side); it is the median over steps after the
first. The two sides alternate step by step in one process (our step runs in TRL's step-end callback,
outside TRL's clock), so load on the shared machine hits both alike. A TRL step is timed from the end
of its previous step (its data loading, collation, logging and metrics count, as our batch assembly does). Loss: the mean train loss of the last steps,
and a held-out loss computed by the same function (`weighted_sums`) for both trained models.
`--profile` prints the top operators of one step on each side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train_bench import Seq, make_sequences  # noqa: E402

LR = {"smollm2-135m": 5e-5}  # a pretrained model takes a small rate; random tiny models learn at 1e-3
TAIL = 3  # train loss: mean of the last TAIL steps


def demo_sequences(preset: str, cap: int, rows: int, tmp: Path) -> tuple[list[Seq], list[Seq]]:
    from bench.demo_tokens import pretokenized_demo
    from openchat_core.training.data import TokenDataset

    train, held = pretokenized_demo(tmp, preset, train=max(rows, 64))

    def seqs(path: Path, n: int) -> list[Seq]:
        data = TokenDataset(path, max_len=cap, overlong="truncate")
        out = []
        for i in range(min(n, len(data))):
            b = data.batch(np.array([i]))
            out.append((b.input_ids[0].numpy(), b.labels.numpy(), (b.weights.numpy() != 0).astype(np.float32)))
        return out

    return seqs(train, rows), seqs(held, rows)


def synthetic_sequences(vocab: int, cap: int, rows: int, seed: int) -> tuple[list[Seq], list[Seq]]:
    return make_sequences(rows, cap, vocab, seed), make_sequences(rows, cap, vocab, seed + 1)


def check_shifted(seqs: list[Seq]) -> None:
    """Our labels are the next token wherever the weight is non-zero; TRL's labels column is built on that."""
    for n, (ids, labels, weights) in enumerate(seqs):
        sup = np.flatnonzero(weights[:-1])
        if not np.array_equal(labels[sup], ids[sup + 1]) or weights[-1] != 0:
            raise ValueError(f"sequence {n}: shifted labels do not match the next input ids at supervised positions")


def trl_rows(seqs: list[Seq]) -> dict[str, list[list[int]]]:
    """TRL's pretokenized format: labels aligned with input_ids (the model shifts), -100 where unsupervised."""
    ids_col, labels_col = [], []
    for ids, _, weights in seqs:
        labels = np.full(len(ids), -100, dtype=np.int64)
        sup = np.flatnonzero(weights[:-1]) + 1
        labels[sup] = ids[sup]
        ids_col.append(ids.tolist())
        labels_col.append(labels.tolist())
    return {"input_ids": ids_col, "labels": labels_col}


def load_model(preset: str, attn: str, seed: int) -> tuple[Any, Any]:
    import torch

    from openchat_core.models.model_factory import load_base_model

    torch.manual_seed(seed)
    model, tokenizer = load_base_model("preset:" + preset, seed=seed, attn_implementation=attn)
    model.config.use_cache = False
    return model, tokenizer


def packed(seqs: list[Seq], idx) -> Any:
    import torch

    from openchat_core.training.data import PackedBatch

    return PackedBatch(torch.from_numpy(np.concatenate([seqs[i][0] for i in idx])).unsqueeze(0),
                       torch.from_numpy(np.concatenate([np.arange(len(seqs[i][0])) for i in idx])).unsqueeze(0),
                       torch.from_numpy(np.concatenate([seqs[i][1] for i in idx])),
                       torch.from_numpy(np.concatenate([seqs[i][2] for i in idx])), [len(seqs[i][0]) for i in idx])


def heldout_loss(model, seqs: list[Seq], cap: int) -> float:
    """Mean CE per supervised token over the held-out sequences, with the trainer's loss function."""
    import torch

    from openchat_core.training.data import sequential_batches
    from openchat_core.training.loss import weighted_sums

    model.eval()
    total = weight = 0.0
    with torch.no_grad():
        for idx in sequential_batches(np.array([len(s[0]) for s in seqs]), cap):
            loss, _, wsum = weighted_sums(model, packed(seqs, idx))
            total, weight = total + loss.item(), weight + wsum.item()
    return total / max(weight, 1.0)


def profiled(enabled: bool):
    """A CPU profiler context when `enabled`, else a no-op one."""
    import contextlib

    import torch

    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if enabled else contextlib.nullcontext()


def profile_table(prof, tokens: int) -> str:
    return f"{tokens} tokens in this step\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


class Ours:
    """Our trainer's step, one batch at a time, so its steps can run between TRL's (`step()` returns False when done)."""

    def __init__(self, preset: str, seqs: list[Seq], held: list[Seq], cap: int, lr: float, seed: int, profile: bool,
                 attn: str = "sdpa_varlen") -> None:
        import torch

        from openchat_core.training.optimizer import adamw
        from openchat_core.training.sampler import MultipackSampler

        self.model, _ = load_model(preset, attn, seed)  # sdpa_varlen: the trainer's default packed attention on CPU
        self.optimizer = adamw(self.model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
        lengths = np.array([len(s[0]) for s in seqs])
        plan = MultipackSampler(lengths, np.ones(len(seqs)), cap, num_ranks=1, seed=seed).plan(0)
        self.batches = [list(b) for b in plan.rank_batches(0)]
        covered = sorted(i for b in self.batches for i in b)
        if covered != list(range(len(seqs))):
            raise RuntimeError(f"multipack left out {len(seqs) - len(covered)} sequence(s); the two sides would not train on the same tokens")
        self.seqs, self.held, self.cap, self.profile = seqs, held, cap, profile
        self.initial = heldout_loss(self.model, held, cap)  # the same weights start both sides
        self.model.train()
        self.rates: list[float] = []
        self.losses: list[float] = []
        self.tokens = self.supervised = 0
        self.table = ""

    def step(self) -> bool:
        import torch

        from openchat_core.training.loss import weighted_sums

        n = len(self.losses)
        if n == len(self.batches):
            return False
        started = time.perf_counter()
        with profiled(self.profile and n == 2) as prof:
            batch = packed(self.seqs, self.batches[n])
            loss, _, wsum = weighted_sums(self.model, batch)
            (loss / wsum.clamp(min=1)).backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.losses.append(loss.item() / max(wsum.item(), 1.0))
        if prof is not None:
            self.table = profile_table(prof, batch.num_tokens)
        self.rates.append(batch.num_tokens / (time.perf_counter() - started))
        self.tokens += batch.num_tokens
        self.supervised += int((batch.weights != 0).sum())
        return True

    def result(self) -> dict:
        return {"steps": len(self.batches), "tokens": self.tokens, "supervised": self.supervised,
                "tokens_per_s": statistics.median(self.rates[1:] or self.rates), "losses": self.losses,
                "heldout": heldout_loss(self.model, self.held, self.cap), "heldout_initial": self.initial, "profile": self.table}


def run_trl(preset: str, seqs: list[Seq], held: list[Seq], cap: int, lr: float, seed: int, profile: bool, out_dir: Path,
            between=lambda: None) -> dict:
    """TRL's SFTTrainer over `seqs`; `between()` runs after each TRL step, outside TRL's clock."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Counting(SFTTrainer):
        """SFTTrainer that counts the real and supervised tokens each step trains on (nothing else changes)."""

        bench_tokens = bench_supervised = 0

        def compute_loss(self, model, inputs, *args, **kwargs):
            self.bench_tokens += int(inputs["input_ids"].numel())
            self.bench_supervised += int((inputs["labels"][:, 1:] != -100).sum())
            return super().compute_loss(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        """Times each TRL step from the end of the previous one (data loading, collation, logging included)."""

        def __init__(self) -> None:
            self.mark, self.tokens, self.rates, self.prof, self.table = 0.0, 0, [], None, ""

        def on_train_begin(self, args, state, control, **kwargs):
            self.mark = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            if profile and state.global_step == 2:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            now, step_tokens = time.perf_counter(), trainer.bench_tokens - self.tokens
            if self.prof is not None:
                self.prof.__exit__(None, None, None)
                self.table, self.prof = profile_table(self.prof, step_tokens), None
            self.rates.append(step_tokens / (now - self.mark))
            self.tokens = trainer.bench_tokens
            between()
            self.mark = time.perf_counter()

    model, tokenizer = load_model(preset, "sdpa", seed)
    config = SFTConfig(
        output_dir=str(out_dir), num_train_epochs=1, per_device_train_batch_size=1, gradient_accumulation_steps=1,
        packing=True, packing_strategy="bfd", padding_free=True, max_length=cap,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch_fused", adam_beta1=0.9, adam_beta2=0.95,
        adam_epsilon=1e-5, weight_decay=0.1, max_grad_norm=1.0, gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=seed, data_seed=seed,
        dataloader_num_workers=0, disable_tqdm=True)
    clock = Clock()
    trainer = Counting(model=model, args=config, train_dataset=Dataset.from_dict(trl_rows(seqs)), processing_class=tokenizer,
                       callbacks=[clock])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"steps": trainer.state.global_step, "tokens": trainer.bench_tokens, "supervised": trainer.bench_supervised,
            "tokens_per_s": statistics.median(clock.rates[1:] or clock.rates), "losses": losses,
            "heldout": heldout_loss(trainer.model, held, cap), "profile": clock.table}


def compare(preset: str, data: str, rows: int, cap: int, seed: int, profile: bool, lr: float | None = None,
            ours_attn: str = "sdpa_varlen") -> dict[str, dict]:
    """Both sides on the same sequences; returns {"ours": ..., "trl": ...}."""
    from openchat_core.templates.tokenizers import load_tokenizer
    from openchat_core.models.presets import MODEL_PRESETS

    lr = lr if lr is not None else LR.get(preset, 1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        if data == "demo":
            seqs, held = demo_sequences(preset, cap, rows, Path(tmp))
        else:
            seqs, held = synthetic_sequences(len(load_tokenizer("preset:" + MODEL_PRESETS[preset].tokenizer)), cap, rows, seed)
        check_shifted(seqs)
        ours = Ours(preset, seqs, held, cap, lr, seed, profile, ours_attn)
        trl = run_trl(preset, seqs, held, cap, lr, seed, profile, Path(tmp) / "trl", between=ours.step)  # steps alternate
        while ours.step():  # ours may need a step more or less than TRL: its packer's bin count
            pass
    return {"ours": ours.result(), "trl": trl, "lr": lr}
    return {"ours": ours, "trl": trl, "lr": lr}


def main() -> None:
    from openchat_core.telemetry import telemetry_defaults

    os.environ.update(telemetry_defaults())  # process start: the hub client, MLflow and accelerate read it on import
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model preset (openchat_core/models/presets.py)")
    parser.add_argument("--data", choices=("synthetic", "demo"), default="synthetic")
    parser.add_argument("--rows", type=int, default=48, help="sequences trained on, once each, by both sides")
    parser.add_argument("--batch-max-len", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=None, help="default: 5e-5 for smollm2-135m, 1e-3 for the random tiny presets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ours-attn", choices=("sdpa_varlen", "sdpa"), default="sdpa_varlen",
                        help="our side's attention: the trainer's CPU default, or TRL's (to separate attention from the rest)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of step 3 on each side")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--json", type=Path, help="also write both sides' figures here")
    args = parser.parse_args()
    r = compare(args.model, args.data, args.rows, args.batch_max_len, args.seed, args.profile, args.lr, args.ours_attn)
    ours, trl = r["ours"], r["trl"]
    if args.json:
        args.json.write_text(json.dumps({side: {k: v for k, v in r[side].items() if k != "profile"} for side in ("ours", "trl")}))
    if args.profile:
        for side in ("ours", "trl"):
            print(f"--- profile, one step, {side} ---\n{r[side]['profile']}")
    rows = ["| trainer | steps | real tokens | supervised tokens | tokens/s (median step) | vs TRL | train loss, first step | "
            f"train loss, last {TAIL} steps | held-out loss |", "|---|---|---|---|---|---|---|---|---|"]
    for name, side in ((f"ours (multipack, `{args.ours_attn}`, supervised-only logits)", ours), ("TRL SFTTrainer (bfd packing, padding-free, sdpa)", trl)):
        rows.append(f"| {name} | {side['steps']} | {side['tokens']:,} | {side['supervised']:,} | {side['tokens_per_s']:,.0f} | "
                    f"**{side['tokens_per_s'] / trl['tokens_per_s']:.2f}×** | {side['losses'][0]:.4f} | "
                    f"{statistics.mean(side['losses'][-TAIL:]):.4f} | {side['heldout']:.4f} |")
    body = (f"Held-out loss before training: {ours['heldout_initial']:.4f}.\n\n" + "\n".join(rows))
    body = (f"`python bench/trl_peer.py --model {args.model} --data {args.data} --rows {args.rows} --batch-max-len {args.batch_max_len}"
            f"{'' if args.ours_attn == 'sdpa_varlen' else ' --ours-attn ' + args.ours_attn}`: "
            f"trl {__import__('trl').__version__}, {args.model} (fp32) on CPU ({os.cpu_count()} cores), one epoch over the same {args.rows} "
            f"sequences on both sides, lr {r['lr']:g}, one packed row of at most {args.batch_max_len} tokens per step. "
            f"Setup: see the script's docstring. " + body)
    print(body)
    if not args.no_write:
        from bench.results import write_section

        write_section("Training: ours vs TRL SFTTrainer", body)


if __name__ == "__main__":
    main()
