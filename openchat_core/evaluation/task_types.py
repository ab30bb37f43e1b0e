"""Task types: which matcher scores a task, and what its rows must contain.

A task type is the folder of an eval file relative to the eval-data root (`zs/agieval`,
`fs_cothub/gsm8k`, `demo/exact`), as in OpenChat's `MATCH_ANSWER_FUNCTION`. Each type also
declares the row fields its matcher reads, so a bad row is reported when the data is loaded
(file, line, field) instead of crashing the scorer after an hour of generation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from openchat_core.evaluation import matchers
from openchat_core.evaluation.coding.extract import extract_solution
from openchat_core.evaluation.coding.problems import row_problem_error
from openchat_core.evaluation.matchers import Matcher, MatchResult
from openchat_core.evaluation.math_answer import ground_truth_answer, match_math


class RowError(ValueError):
    """A row lacks a field its task type needs, or has it with the wrong type."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownTaskTypeError(KeyError):
    """No matcher is registered for a task type."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _require_question(row: Mapping[str, Any]) -> None:
    if "question" not in row:
        raise RowError("question", "missing; every eval row needs the prompt text as a string")
    if not isinstance(row["question"], str):
        raise RowError("question", f"must be a string, got {_type_name(row['question'])}")


def _require_string_labels(row: Mapping[str, Any]) -> None:
    if "label" not in row:
        raise RowError("label", "missing; give the correct answer as a string or a list of strings")
    label = row["label"]
    if isinstance(label, str):
        return
    if not isinstance(label, list) or not label or not all(isinstance(x, str) for x in label):
        raise RowError("label", f"must be a string or a non-empty list of strings, got {label!r:.80}")


def _require_options(row: Mapping[str, Any], *, allow_null: bool) -> None:
    options = row.get("options")
    if options is None and allow_null:
        return
    if not isinstance(options, list) or not options or not all(isinstance(x, str) for x in options):
        expected = "a list of option strings or null" if allow_null else "a non-empty list of option strings"
        raise RowError("options", f"must be {expected}, got {options!r:.80}")


def _validate_multiple_choice(row: Mapping[str, Any]) -> None:
    _require_question(row)
    _require_string_labels(row)
    _require_options(row, allow_null=False)


def _validate_optional_options(row: Mapping[str, Any]) -> None:
    _require_question(row)
    _require_string_labels(row)
    _require_options(row, allow_null=True)


def _validate_labelled(row: Mapping[str, Any]) -> None:
    _require_question(row)
    _require_string_labels(row)


def _validate_math(row: Mapping[str, Any]) -> None:
    _require_question(row)
    if ground_truth_answer(row) is None:
        raise RowError("_metadata.solution", "must be a string containing a \\boxed{...} final answer")


def _validate_humaneval(row: Mapping[str, Any]) -> None:
    _require_question(row)
    problem = row_problem_error(row.get("_metadata"))
    if problem is not None:
        raise RowError(*problem)


def match_humaneval(row: Mapping[str, Any], response: str) -> MatchResult:
    """HumanEval: the program extracted from the answer (OpenChat's rules); `correct` comes from running it."""
    code = extract_solution(row["_metadata"], response)
    return MatchResult(matched=code.matched, answer=code.solution, correct=False)


@dataclass(frozen=True)
class TaskType:
    """How to check and score the rows of one task type. `executes_code`: the matcher only extracts a
    program; correctness comes from running it in the sandbox (evaluation/coding)."""

    name: str
    matcher: Matcher
    validate_row: Callable[[Mapping[str, Any]], None]
    description: str
    executes_code: bool = False

    def match(self, row: Mapping[str, Any], response: str) -> MatchResult:
        return self.matcher(row, response)


TASK_TYPES: Mapping[str, TaskType] = MappingProxyType({
    t.name: t
    for t in (
        TaskType("zs/agieval", matchers.match_agieval, _validate_labelled,
                 "AGIEval zero-shot multiple choice: first capital letter A-F"),
        TaskType("zs/bbh_mc_orca", matchers.match_option_letter, _validate_multiple_choice,
                 "BBH zero-shot multiple choice (Orca prompt): first option letter"),
        TaskType("zs/truthfulqa_orca", matchers.match_option_letter, _validate_multiple_choice,
                 "TruthfulQA zero-shot multiple choice (Orca prompt): first option letter"),
        TaskType("zs/gpqa", matchers.match_gpqa, _validate_labelled,
                 'GPQA: letter after "The correct answer is" (guess C if absent)'),
        TaskType("fs_cothub/bbh", matchers.match_bbh_cot, _validate_optional_options,
                 'BBH few-shot CoT: option or free-form answer after "answer is"'),
        TaskType("fs_cothub/gsm8k", matchers.match_gsm8k, _validate_labelled,
                 "GSM8K few-shot CoT: last number, compared numerically"),
        TaskType("fs_cothub/mmlu", matchers.match_mmlu_cot, _validate_multiple_choice,
                 'MMLU few-shot CoT: option after "answer is" (guess (C) if absent)'),
        TaskType("fs_cothub/math", match_math, _validate_math,
                 "MATH few-shot CoT: boxed / 'The answer is' answer, graded with normalisation + sympy"),
        TaskType("demo/exact", matchers.match_exact, _validate_labelled,
                 "exact match: first line of the response equals a label"),
        TaskType("coding/humaneval", match_humaneval, _validate_humaneval,
                 "HumanEval/HumanEval+: extracted program run on EvalPlus's base and plus tests in a sandbox",
                 executes_code=True),
    )
})


def known_task_types() -> list[str]:
    return sorted(TASK_TYPES)


def get_task_type(name: str) -> TaskType:
    """The task type registered under `name`; the error lists every known type."""
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise UnknownTaskTypeError(
            f"unknown task type {name!r}: no matcher scores it. Known task types: {', '.join(known_task_types())}. "
            f"A task type is the folder of the .jsonl file under the eval-data root "
            f"(e.g. <root>/fs_cothub/gsm8k/gsm8k.jsonl has type 'fs_cothub/gsm8k'); exclude it with --eval-sets "
            f"or move the file.") from None


def match_answer(task_type: str, row: Mapping[str, Any], response: str) -> MatchResult:
    """Score one response with its task type's matcher (OpenChat's MATCH_ANSWER_FUNCTION[task_type])."""
    return get_task_type(task_type).match(row, response)
