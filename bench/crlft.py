"""Does C-RLFT help? Three trainings on the same mixed-quality demo data and the same step budget:

    .venv/bin/python bench/crlft.py [--epochs 8] [--seeds 0 1]

- **C-RLFT**: conditions kept ("GPT4 Correct" expert, "GPT3" noisy) and weighted 1.0 / 0.1.
- **SFT, all data**: every conversation under one condition ("GPT4 Correct"), weight 1.0: plain SFT.
- **SFT, expert only**: only the expert conversations, weight 1.0, run for as many optimizer steps
  as the others (more epochs over less data).

Each model (small-mistral, the demo's) is trained with the project's trainer (DeepSpeed, CPU) and
scored by exact match on the held-out questions under the expert condition (greedy, transformers).
The prompts are identical for the three models. Results: bench/RESULTS.md, "C-RLFT vs SFT".
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import write_section  # noqa: E402
from openchat_core.config import ModelConfig, TrainConfig  # noqa: E402
from openchat_core.data.demo import EXPERT_CONDITION, NOISY_CONDITION, DemoSizes, generate_demo_data  # noqa: E402
from openchat_core.data.pretokenize import pretokenize_file  # noqa: E402
from openchat_core.evaluation.runner import run_generation_eval  # noqa: E402
from openchat_core.models.checkpoint import list_epoch_checkpoints  # noqa: E402
from openchat_core.templates.conversation import TemplateSpec  # noqa: E402
from openchat_core.templates.tokenizers import load_tokenizer  # noqa: E402
from openchat_core.training.launcher import run_training  # noqa: E402
from openchat_core.training.trainer_config import TrainerConfig  # noqa: E402

VARIANTS = ("C-RLFT", "SFT, all data", "SFT, expert only")


def variant_conversations(train_file: Path, variant: str) -> list[dict]:
    out = []
    for line in train_file.read_text().splitlines():
        try:
            conv = json.loads(line)
        except json.JSONDecodeError:
            continue  # the demo's malformed lines
        if not isinstance(conv, dict) or conv.get("condition") not in (EXPERT_CONDITION, NOISY_CONDITION) or len(conv.get("items", [])) != 2:
            continue
        expert = conv["condition"] == EXPERT_CONDITION
        if variant == "SFT, expert only" and not expert:
            continue
        if variant == "C-RLFT":
            weight = 1.0 if expert else 0.1
        else:
            weight, conv["condition"] = 1.0, EXPERT_CONDITION
        conv["items"][0]["weight"], conv["items"][1]["weight"] = 0.0, weight
        out.append(conv)
    return out


def pretokenize_variant(work: Path, variant: str, convs: list[dict], spec: TemplateSpec) -> tuple[Path, int]:
    folder = work / variant.replace(", ", "-").replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    report = pretokenize_file(folder / "train.jsonl", folder / "tokens.parquet", spec, tokenizer_fingerprint="bench")
    return folder, report.counts.tokens


def train_and_score(folder: Path, tokens: int, variant: str, convs: list[dict], epochs: int, seed: int, eval_root: Path,
                    lr: float, batch_max_len: int) -> dict:
    folder = folder / f"seed{seed}"
    cfg = TrainerConfig(data=str(folder.parent / "tokens.parquet"), out_dir=str(folder / "train"),
                        train=TrainConfig(epochs=epochs, batch_max_len=batch_max_len, lr=lr, zero_stage=0, seed=seed, save_every=epochs),
                        model=ModelConfig(base="preset:small-mistral"))
    started = time.time()
    run_training(cfg, on_line=lambda line: None)
    steps = sum(1 for _ in open(folder / "train" / "train_log.jsonl"))
    checkpoint = list_epoch_checkpoints(folder / "train")[-1].path
    result = run_generation_eval(checkpoint, eval_root, ["demo"], out_dir=folder / "eval", condition=EXPERT_CONDITION,
                                 engine="transformers", max_new_tokens=8)
    return {"accuracy": result.summary.overall.accuracy, "tasks": {k: v.accuracy for k, v in result.summary.tasks.items()},
            "steps": steps, "tokens": tokens, "conversations": len(convs), "epochs": epochs, "train_s": time.time() - started}


def main() -> None:
    from openchat_core.telemetry import telemetry_defaults

    os.environ.update(telemetry_defaults())  # process start: Ray, vLLM, MLflow and the hub client read it on import
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the full-data variants (expert-only gets the same steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-max-len", type=int, default=1024)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = TemplateSpec.from_tokenizer("openchat_3.5", load_tokenizer("preset:mistral"))
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        info = generate_demo_data(work / "demo", sizes=DemoSizes())
        sets = {v: variant_conversations(work / "demo" / "train.jsonl", v) for v in VARIANTS}
        tokenized = {v: pretokenize_variant(work, v, sets[v], spec) for v in VARIANTS}
        # equal budget = (about) the same number of training tokens, hence optimizer steps, for every variant
        budget = args.epochs * tokenized["C-RLFT"][1]
        epochs = {v: max(1, round(budget / tokenized[v][1])) for v in VARIANTS}
        for seed in args.seeds:
            for variant in VARIANTS:
                folder, tokens = tokenized[variant]
                r = train_and_score(folder, tokens, variant, sets[variant], epochs[variant], seed, work / "demo" / "eval_data", args.lr,
                                    args.batch_max_len)
                results[variant].append(r)
                print(f"seed {seed} {variant}: accuracy {r['accuracy']:.3f} ({r['steps']} steps, {r['train_s']:.0f} s) {r['tasks']}", flush=True)
    tasks = sorted(results["C-RLFT"][0]["tasks"])
    short = [t.rsplit("/", 1)[-1] for t in tasks]
    rows = ["| variant | conversations | epochs | steps | exact match, mean (per seed) | " + " | ".join(short) + " |",
            "|---" * (5 + len(tasks)) + "|"]
    for variant in VARIANTS:
        rs = results[variant]
        mean = statistics.mean(r["accuracy"] for r in rs)
        per_seed = ", ".join(f"{r['accuracy']:.3f}" for r in rs)
        per_task = " | ".join(f"{statistics.mean(r['tasks'][t] for r in rs):.2f}" for t in tasks)
        rows.append(f"| {variant} | {rs[0]['conversations']} | {rs[0]['epochs']} | {rs[0]['steps']} | **{mean:.3f}** ({per_seed}) | {per_task} |")
    crlft, sft, expert = (statistics.mean(r["accuracy"] for r in results[v]) for v in VARIANTS)
    verdict = (f"C-RLFT − plain SFT = **{(crlft - sft) * 100:+.1f} points** (goal ≥ +10); C-RLFT − expert-only = "
               f"**{(crlft - expert) * 100:+.1f} points** (goal ≥ 0).")
    body = (f"`python bench/crlft.py --epochs {args.epochs} --seeds {' '.join(map(str, args.seeds))}` — demo data (bench: "
            f"{info['expert']} expert + {info['noisy']} noisy conversations; the noisy source answers right {DemoSizes().noisy_correct_rate:.0%} "
            f"of the time and otherwise makes the task's typical mistake), small-mistral, lr {args.lr}, batch_max_len {args.batch_max_len}, "
            f"equal budget (epochs chosen so every variant trains on about the same number of tokens). Scored by exact match on {info['eval_questions']} held-out questions under the expert condition "
            f"(\"{EXPERT_CONDITION}\"), greedy.\n\n" + "\n".join(rows) + "\n\n" + verdict)
    print(body)
    write_section("C-RLFT vs SFT", body)


if __name__ == "__main__":
    main()
