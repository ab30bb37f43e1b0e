"""The demo dataset: deterministic, correctly labelled, with the intended expert/noisy mix and malformed lines."""

from __future__ import annotations

import json

from openchat_core.data.demo import EXPERT_CONDITION, MALFORMED_LINES, NOISY_CONDITION, TASKS, DemoSizes, generate_demo_data
from openchat_core.data.validate import validate_files


def _conversations(path):
    out = []
    for line in path.read_text().splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and len(obj.get("items", [])) == 2 and obj["items"][0]["role"] == "user":
            out.append(obj)
    return out


def _task_of(question):
    prefixes = {"First item:": "first", "Last item:": "last", "Count the items:": "count", "Letter before": "previous",
                "Next letter after": "next", "Add": "add"}
    return next(t for p, t in prefixes.items() if question.startswith(p))


def _solve(question):
    task, body = _task_of(question), question.split(":", 1)[-1].split()
    if task == "first":
        return body[0]
    if task == "last":
        return body[-1]
    if task == "count":
        return str(len(body))
    if task == "previous":
        return chr(ord(question.split()[-1]) - 1)
    if task == "next":
        return chr(ord(question.split()[-1]) + 1)
    words = question.split()
    return str(int(words[1]) + int(words[3]))


def test_deterministic_bytes(tmp_path):
    generate_demo_data(tmp_path / "a", seed=3, sizes=DemoSizes(train=300, eval_per_task=5))
    generate_demo_data(tmp_path / "b", seed=3, sizes=DemoSizes(train=300, eval_per_task=5))
    for name in ("train.jsonl", "eval.jsonl", "eval_data/demo/exact/first.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    generate_demo_data(tmp_path / "c", seed=4, sizes=DemoSizes(train=300, eval_per_task=5))
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()


def test_expert_always_right_noisy_mostly_systematically_wrong(tmp_path):
    summary = generate_demo_data(tmp_path, sizes=DemoSizes(train=3000))
    convs = [c for c in _conversations(tmp_path / "train.jsonl") if c.get("condition") in (EXPERT_CONDITION, NOISY_CONDITION)]
    expert = [c for c in convs if c["condition"] == EXPERT_CONDITION]
    noisy = [c for c in convs if c["condition"] == NOISY_CONDITION]
    assert all(c["items"][1]["content"] == _solve(c["items"][0]["content"]) for c in expert)
    noisy_right = sum(c["items"][1]["content"] == _solve(c["items"][0]["content"]) for c in noisy) / len(noisy)
    assert 0.15 < noisy_right < 0.35
    assert 0.15 < len(expert) / len(convs) < 0.25 and summary["expert"] == len(expert)


def test_eval_split_labels_correct_and_held_out(tmp_path):
    generate_demo_data(tmp_path, sizes=DemoSizes(train=2000, eval_per_task=20))
    train_questions = {c["items"][0]["content"] for c in _conversations(tmp_path / "train.jsonl")}
    for task in TASKS:
        rows = [json.loads(x) for x in (tmp_path / "eval_data" / "demo" / "exact" / f"{task.name}.jsonl").read_text().splitlines()]
        assert len(rows) == 20 and all(r["label"] == _solve(r["question"]) for r in rows)
        if task.name not in ("next", "previous", "add"):  # larger question spaces: no eval question is trained on
            assert not {r["question"] for r in rows} & train_questions


def test_malformed_lines_are_exactly_the_quarantine(tmp_path):
    generate_demo_data(tmp_path, sizes=DemoSizes(train=500))
    report = validate_files([tmp_path / "train.jsonl"], tmp_path / "v")
    assert report.rejected == len(MALFORMED_LINES) and report.valid == 500
    raws = {json.loads(x)["raw"] for x in (tmp_path / "v" / "quarantine.jsonl").read_text().splitlines()}
    assert raws == set(MALFORMED_LINES)
