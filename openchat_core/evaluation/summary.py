"""Per-question results and their aggregation into a summary (accuracy and unmatched rate per task and type).

`QuestionResult` is one line of `results.jsonl`; `EvalSummary` is `summary.json`. Accuracy is the
mean over questions (micro), per task, per task type and overall, as OpenChat's `view_results`
computes it; each task type also carries the mean over its tasks (macro), the usual way BBH and
MMLU averages are reported. The summary holds no timings or timestamps, so the same model, data
and settings give a byte-identical `summary.json`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

SUMMARY_SCHEMA_VERSION = 1


class QuestionResult(BaseModel):
    """One scored question (a line of results.jsonl)."""

    model_config = ConfigDict(extra="forbid")

    task_name: str
    task_type: str
    line: int
    question: str
    label: Any
    response: str
    answer: str
    matched: bool
    correct: bool
    finish_reason: str
    prompt_tokens: int
    output_token_ids: list[int]
    error: str | None = None
    execution: dict[str, Any] | None = None  # coding tasks: sandbox verdicts (base, plus, error, wall_s)


class Score(BaseModel):
    n: int
    correct: int
    matched: int
    accuracy: float
    unmatched_rate: float


class TaskTypeScore(Score):
    tasks: int
    macro_accuracy: float


class CodingScore(BaseModel):
    """pass@1 of one coding task (greedy: one sample per problem) on base and base+plus tests, as EvalPlus."""

    n: int
    pass_base: int
    pass1_base: float
    n_plus: int
    pass_plus: int | None
    pass1_plus: float | None
    verdicts: dict[str, int]


class EvalSummary(BaseModel):
    """What a person or the registry needs to compare runs; see module docstring."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SUMMARY_SCHEMA_VERSION
    model_path: str
    model_type: str
    engine: str
    engine_info: dict[str, Any]
    condition: str
    system: str
    max_new_tokens: int
    eval_data_root: str
    eval_sets: list[str]
    limit_per_task: int | None
    eval_data_digest: str
    prompts_digest: str
    overall: Score
    task_types: dict[str, TaskTypeScore]
    tasks: dict[str, Score]
    finish_reasons: dict[str, int]
    truncated_prompts: int
    data_issues: int
    scoring_errors: int
    notes: list[str]
    coding: dict[str, CodingScore] = {}
    sandbox: dict[str, Any] | None = None  # coding tasks: options, limits and the isolation that held

    def comparable_with(self, other: EvalSummary) -> bool:
        """Same questions and prompts (eval-set digest, condition, system prompt)?"""
        return (self.eval_data_digest, self.condition, self.system) == (other.eval_data_digest, other.condition, other.system)


def score(results: Iterable[QuestionResult]) -> Score:
    items = list(results)
    n = len(items)
    correct = sum(r.correct for r in items)
    matched = sum(r.matched for r in items)
    return Score(n=n, correct=correct, matched=matched, accuracy=correct / n if n else 0.0,
                 unmatched_rate=(n - matched) / n if n else 0.0)


def aggregate(results: Sequence[QuestionResult]) -> tuple[Score, dict[str, TaskTypeScore], dict[str, Score]]:
    """Overall, per-task-type and per-task scores (keys sorted)."""
    by_task: dict[str, list[QuestionResult]] = defaultdict(list)
    for r in results:
        by_task[r.task_name].append(r)
    tasks = {name: score(by_task[name]) for name in sorted(by_task)}
    type_of = {r.task_name: r.task_type for r in results}
    task_types: dict[str, TaskTypeScore] = {}
    for task_type in sorted(set(type_of.values())):
        names = [n for n in tasks if type_of[n] == task_type]
        micro = score(r for n in names for r in by_task[n])
        task_types[task_type] = TaskTypeScore(**micro.model_dump(), tasks=len(names),
                                              macro_accuracy=sum(tasks[n].accuracy for n in names) / len(names))
    return score(results), task_types, tasks


def finish_reason_counts(results: Iterable[QuestionResult]) -> dict[str, int]:
    return dict(sorted(Counter(r.finish_reason for r in results).items()))


def coding_type_scores(summary: EvalSummary) -> dict[str, dict[str, float | None]]:
    """pass@1 per coding task type, over all its problems: {"pass1_base": ..., "pass1_plus": ... or None}."""
    by_type: dict[str, list[CodingScore]] = defaultdict(list)
    for task, score in summary.coding.items():
        by_type[task.rpartition("/")[0]].append(score)
    out: dict[str, dict[str, float | None]] = {}
    for task_type, scores in sorted(by_type.items()):
        n = sum(s.n for s in scores)
        with_plus = all(s.pass_plus is not None and s.n_plus == s.n for s in scores)
        out[task_type] = {"pass1_base": sum(s.pass_base for s in scores) / n if n else 0.0,
                          "pass1_plus": sum(s.pass_plus or 0 for s in scores) / n if n and with_plus else None}
    return out
