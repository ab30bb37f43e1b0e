"""Result tables across runs: rows for artifacts/CLI, markdown rendering, comparability warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from openchat_core.evaluation.summary import EvalSummary, QuestionResult, aggregate, finish_reason_counts
from openchat_core.evaluation.view import ViewRow, comparability_notes, load_runs, render_markdown, task_rows, task_type_rows


def _result(task_name: str, correct: bool, matched: bool = True) -> QuestionResult:
    return QuestionResult(task_name=task_name, task_type=task_name.rpartition("/")[0], line=1, question="q", label="a",
                          response="", answer="", matched=matched, correct=correct, finish_reason="stop",
                          prompt_tokens=3, output_token_ids=[1])


def write_summary(folder: Path, results: list[QuestionResult], digest: str = "d1", condition: str = "GPT4 Correct") -> Path:
    overall, types, tasks = aggregate(results)
    summary = EvalSummary(model_path="m", model_type="openchat_v3.2_mistral", engine="transformers", engine_info={},
                          condition=condition, system="", max_new_tokens=8, eval_data_root="data", eval_sets=[],
                          limit_per_task=None, eval_data_digest=digest, prompts_digest="p", overall=overall,
                          task_types=types, tasks=tasks, finish_reasons=finish_reason_counts(results),
                          truncated_prompts=0, data_issues=0, scoring_errors=0, notes=[])
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(summary.model_dump_json(indent=2))
    return folder


@pytest.fixture
def two_epochs(tmp_path) -> Path:
    write_summary(tmp_path / "evals/ep_1", [_result("demo/exact/basics", True), _result("demo/exact/basics", False),
                                            _result("demo/exact/more", False, matched=False)])
    write_summary(tmp_path / "evals/ep_2", [_result("demo/exact/basics", True), _result("demo/exact/basics", True),
                                            _result("demo/exact/more", True),
                                            _result("fs_cothub/gsm8k/gsm8k", True)])
    return tmp_path / "evals"


def test_rows_per_task_type_and_task(two_epochs):
    runs = load_runs([two_epochs])
    assert [r.label for r in runs] == ["ep_1", "ep_2"]
    rows = task_type_rows(runs)
    assert ViewRow("ep_1", "demo/exact", None, 3, pytest.approx(1 / 3), pytest.approx(1 / 3)) in rows
    assert ViewRow("ep_2", "fs_cothub/gsm8k", None, 1, 1.0, 0.0) in rows
    assert len(rows) == 3
    per_task = task_rows(runs, "demo/exact")
    assert {(r.run, r.task, r.n) for r in per_task} == {("ep_1", "basics", 2), ("ep_1", "more", 1),
                                                        ("ep_2", "basics", 2), ("ep_2", "more", 1)}


def test_markdown_tables(two_epochs):
    text = render_markdown(load_runs([two_epochs / "ep_1", two_epochs / "ep_2"]))
    assert "| run | demo/exact | fs_cothub/gsm8k |" in text
    assert "| ep_1 | 33.3 (33.3) | - |" in text  # ep_1 has no GSM8K: a dash, not a zero
    assert "| ep_2 | 100.0 (0.0) | 100.0 (0.0) |" in text
    assert "### demo/exact" in text and "| task | ep_1 | ep_2 |" in text
    assert "| basics | 50.0 (0.0) | 100.0 (0.0) |" in text
    assert "| more | 0.0 (100.0) | 100.0 (0.0) |" in text
    assert "Not comparable" not in text


def test_runs_on_different_data_or_condition_are_flagged(two_epochs, tmp_path):
    write_summary(tmp_path / "other/ep_1", [_result("demo/exact/basics", True)], digest="d2")
    runs = load_runs([two_epochs, tmp_path / "other"])
    assert [r.label for r in runs] == ["evals/ep_1", "evals/ep_2", "other/ep_1"]  # made unique
    notes = comparability_notes(runs)
    assert len(notes) == 1 and "other/ep_1 (data d2" in notes[0]
    assert "> Not comparable" in render_markdown(runs)
    assert not runs[0].summary.comparable_with(runs[2].summary)
    assert runs[0].summary.comparable_with(runs[1].summary)


def test_load_errors(tmp_path, two_epochs):
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        load_runs([tmp_path / "empty"])
    with pytest.raises(ValueError, match="1 labels for 2 result folders"):
        load_runs([two_epochs], labels=["only-one"])
    assert [r.label for r in load_runs([two_epochs], labels=["a", "b"])] == ["a", "b"]
