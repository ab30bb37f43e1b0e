"""Deterministic mixed-quality demo data (`openchat demo-data`): the C-RLFT setting in miniature.

Small symbolic tasks whose answers can be checked exactly and that a 2-layer model learns in CPU
minutes (count, single-digit addition, next/previous letter, first/last item; reversing and
uppercasing were tried and need more capacity or time than a demo has). Two data sources, as in
OpenChat's paper:

- an **expert** class (condition "GPT4 Correct", ~20% of conversations): always correct;
- a **noisy** class (condition "GPT3", ~80%): correct only ~25% of the time; otherwise it makes
  the task's *typical* mistake (counts one too many, gives the next letter for the previous one,
  the last item for the first, ...).

Because the noisy mistakes are systematic and the noisy class is larger, plain SFT on everything
learns the mistake as the most likely answer; C-RLFT (condition prefixes + lower weight for the
noisy class) can learn both behaviours and answer correctly under the expert condition.

Outputs (under `out_dir`): `train.jsonl` (with a few malformed lines so validation's quarantine
has something to show), `eval.jsonl` (held-out expert conversations for eval loss), and
`eval_data/demo/exact/<task>.jsonl` (held-out questions with labels, OpenChat's eval layout).
Everything is a pure function of (seed, sizes): same inputs, byte-identical files.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENERATOR_VERSION = "2"
EXPERT_CONDITION = "GPT4 Correct"
NOISY_CONDITION = "GPT3"
LETTERS = string.ascii_lowercase


@dataclass(frozen=True)
class DemoTask:
    """A question generator, its correct answer and the typical wrong answer of the noisy source."""

    name: str
    make: Callable[[random.Random], tuple[str, Any]]
    correct: Callable[[Any], str]
    mistake: Callable[[Any], str]


def _letters(rng: random.Random, low: int, high: int) -> list[str]:
    return [rng.choice(LETTERS) for _ in range(rng.randint(low, high))]


TASKS: tuple[DemoTask, ...] = (
    DemoTask("count", lambda r: (lambda xs: (f"Count the items: {' '.join(xs)}", xs))(_letters(r, 2, 7)),
             lambda xs: str(len(xs)), lambda xs: str(len(xs) + 1)),
    DemoTask("add", lambda r: (lambda a, b: (f"Add {a} and {b}", (a, b)))(r.randint(0, 9), r.randint(0, 9)),
             lambda ab: str(ab[0] + ab[1]), lambda ab: str(ab[0] + ab[1] + 1)),
    DemoTask("next", lambda r: (lambda c: (f"Next letter after {c}", c))(r.choice(LETTERS[:-1])),
             lambda c: LETTERS[LETTERS.index(c) + 1], lambda c: LETTERS[LETTERS.index(c) - 1] if c != "a" else "z"),
    DemoTask("previous", lambda r: (lambda c: (f"Letter before {c}", c))(r.choice(LETTERS[1:])),
             lambda c: LETTERS[LETTERS.index(c) - 1], lambda c: LETTERS[LETTERS.index(c) + 1] if c != "z" else "a"),
    DemoTask("last", lambda r: (lambda xs: (f"Last item: {' '.join(xs)}", xs))(_letters(r, 3, 5)),
             lambda xs: xs[-1], lambda xs: xs[0]),
    DemoTask("first", lambda r: (lambda xs: (f"First item: {' '.join(xs)}", xs))(_letters(r, 3, 5)),
             lambda xs: xs[0], lambda xs: xs[-1]),
)
TASKS_BY_NAME = {t.name: t for t in TASKS}

# Lines that must end up in quarantine, one per interesting rule (the demo shows validation at work).
MALFORMED_LINES: tuple[str, ...] = (
    '{"items": [{"role": "user", "content": "First item: a b"}, {"role": "assistant", "content": "a"}',  # truncated JSON
    '{"items": [{"role": "bot", "content": "First item: a b"}, {"role": "assistant", "content": "a"}]}',
    '{"items": [{"role": "user", "content": "Add 1 and 2"}, {"role": "assistant", "content": "3", "weight": NaN}]}',
    '{"items": [{"role": "user", "content": "Add 1 and 2"}, {"role": "assistant", "content": "3", "weight": true}]}',
    '{"items": [], "condition": "GPT4 Correct"}',
    '{"items": [{"role": "user", "content": "only a question"}], "condition": "GPT3"}',
    '["not", "an", "object"]',
)


@dataclass(frozen=True)
class DemoSizes:
    train: int = 3000
    eval_per_task: int = 40
    expert_fraction: float = 0.2
    noisy_correct_rate: float = 0.25


def _conversation(question: str, answer: str, condition: str) -> dict[str, Any]:
    return {"items": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], "condition": condition}


def generate_demo_data(out_dir: Path | str, seed: int = 0, sizes: DemoSizes = DemoSizes()) -> dict[str, Any]:
    """Write the demo dataset; returns a summary (paths and counts). Deterministic in (seed, sizes)."""
    out = Path(out_dir)
    rng = random.Random(seed)
    eval_questions: set[str] = set()
    eval_rows: dict[str, list[dict[str, Any]]] = {t.name: [] for t in TASKS}
    for task in TASKS:  # held-out questions first, so training can avoid them where the space allows
        attempts = 0
        while len(eval_rows[task.name]) < sizes.eval_per_task and attempts < 50 * sizes.eval_per_task:
            attempts += 1
            question, value = task.make(rng)
            if question in eval_questions and task.name not in ("next", "previous", "add"):
                continue
            eval_questions.add(question)
            eval_rows[task.name].append({"question": question, "label": task.correct(value)})

    train: list[str] = []
    counts = {"expert": 0, "noisy": 0, "noisy_correct": 0}
    small_space = {"next", "previous", "add"}  # 25-100 possible questions: the eval split necessarily overlaps training
    while len(train) < sizes.train:
        task = TASKS[rng.randrange(len(TASKS))]
        question, value = task.make(rng)
        if question in eval_questions and task.name not in small_space:
            continue
        if rng.random() < sizes.expert_fraction:
            conv, kind = _conversation(question, task.correct(value), EXPERT_CONDITION), "expert"
        else:
            ok = rng.random() < sizes.noisy_correct_rate
            conv, kind = _conversation(question, task.correct(value) if ok else task.mistake(value), NOISY_CONDITION), "noisy"
            counts["noisy_correct"] += ok
        counts[kind] += 1
        train.append(json.dumps(conv, ensure_ascii=False))
    for i, bad in enumerate(MALFORMED_LINES):  # spread the malformed lines through the file
        train.insert((i + 1) * len(train) // (len(MALFORMED_LINES) + 1), bad)

    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("\n".join(train) + "\n")
    held_out = [json.dumps(_conversation(r["question"], r["label"], EXPERT_CONDITION), ensure_ascii=False)
                for rows in eval_rows.values() for r in rows]
    (out / "eval.jsonl").write_text("\n".join(held_out) + "\n")
    exact_dir = out / "eval_data" / "demo" / "exact"
    exact_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in eval_rows.items():
        (exact_dir / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = {"generator_version": GENERATOR_VERSION, "seed": seed, "sizes": sizes.__dict__, "train_lines": len(train),
               "malformed_lines": len(MALFORMED_LINES), **counts, "eval_questions": sum(len(r) for r in eval_rows.values()),
               "expert_condition": EXPERT_CONDITION, "noisy_condition": NOISY_CONDITION,
               "paths": {"train": str(out / "train.jsonl"), "eval": str(out / "eval.jsonl"), "eval_data": str(out / "eval_data")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
