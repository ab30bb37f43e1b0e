"""Matchers on real OpenChat eval rows (tests/fixtures/eval_data), including OpenChat's scoring bugs, fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openchat_core.evaluation import matchers
from openchat_core.evaluation.grading import math_grader
from openchat_core.evaluation.matchers import MatchResult, canonical_number
from openchat_core.evaluation.math_answer import extract_math_answer, last_boxed_content, match_math
from openchat_core.evaluation.task_types import UnknownTaskTypeError, get_task_type, known_task_types, match_answer

FIXTURES = Path(__file__).parents[1] / "fixtures" / "eval_data"


def rows(task_file: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / task_file).read_text(encoding="utf-8").splitlines()]


# --- zero-shot multiple choice -------------------------------------------------------------------

AQUA = rows("zs/agieval/aqua-rat.zero-shot.jsonl")  # labels A, E


@pytest.mark.parametrize(("response", "expected"), [
    (" (A) 5(√3 + 1)", MatchResult(True, "A", True)),
    (" E", MatchResult(True, "E", False)),
    # AGIEval's own rule: the first capital A-F anywhere, even inside a word ("Because" -> B).
    (" Because the car moves, (A)", MatchResult(True, "B", False)),
    (" none of these", MatchResult(False, "", False)),
    ("", MatchResult(False, "", False)),
])
def test_agieval_first_capital_letter(response, expected):
    assert matchers.match_agieval(AQUA[0], response) == expected


def test_agieval_second_row_label_e():
    assert matchers.match_agieval(AQUA[1], " (E) $78.20").correct


BOOL = rows("zs/bbh_mc_orca/boolean_expressions.jsonl")[0]  # options A, B; label B
SHAPES = rows("zs/bbh_mc_orca/geometric_shapes.jsonl")[0]  # labels H and K
TRUTHFUL = rows("zs/truthfulqa_orca/truthfulqa_mc.jsonl")


def test_option_letter_first_character_in_options():
    assert matchers.match_option_letter(BOOL, " (B) False.") == MatchResult(True, "B", True)
    assert matchers.match_option_letter(BOOL, " (A) True.") == MatchResult(True, "A", False)
    # "C" is not an option of this row: skipped, then nothing else qualifies
    assert matchers.match_option_letter(BOOL, " C") == MatchResult(False, "", False)


def test_option_letter_accepts_any_of_several_labels():
    assert matchers.match_option_letter(SHAPES, " (K) trapezoid").correct
    assert matchers.match_option_letter(SHAPES, " (H)").correct
    assert not matchers.match_option_letter(SHAPES, " (J) triangle").correct


def test_truthfulqa_uses_the_same_rule():
    assert get_task_type("zs/truthfulqa_orca").match(TRUTHFUL[0], " (D) Nauru") == MatchResult(True, "D", True)
    assert get_task_type("zs/truthfulqa_orca").match(TRUTHFUL[1], " (B)").correct is False


GPQA = rows("zs/gpqa/synthetic.jsonl")  # labels B, C


def test_gpqa_letter_after_phrase_and_fallback_guess():
    assert matchers.match_gpqa(GPQA[0], "Nitrogen dominates. The correct answer is (B).") == MatchResult(True, "B", True)
    # no phrase: OpenChat guesses "C"; unmatched, and the guess is scored (chance level)
    assert matchers.match_gpqa(GPQA[0], "I think it is (B)") == MatchResult(False, "C", False)
    assert matchers.match_gpqa(GPQA[1], "Sodium is Na") == MatchResult(False, "C", True)
    # phrase but no letter A-D after it
    assert matchers.match_gpqa(GPQA[0], "The correct answer is nitrogen") == MatchResult(False, "C", False)


# --- few-shot CoT ---------------------------------------------------------------------------------

DATE = rows("fs_cothub/bbh/date_understanding.jsonl")[0]  # options (A)..(F), label (B)
WORDS = rows("fs_cothub/bbh/word_sorting.jsonl")[0]  # free form, label "syndrome therefrom"


@pytest.mark.parametrize(("response", "expected"), [
    ("Christmas is Dec 25. So the answer is (B).", MatchResult(True, "(B)", True)),
    ("So the answer is (B) 12/25/1937.", MatchResult(True, "(B)", True)),
    # options are taken by position: OpenChat scanned (A)..(Z) and returned (A) here
    ("So the answer is (C), not (A).", MatchResult(True, "(C)", False)),
    # the last "answer is " counts
    ("One might say the answer is (A). But the answer is (B).", MatchResult(True, "(B)", True)),
    ("So the answer is 12/25/1937.", MatchResult(False, "12/25/1937.", False)),
    ("Tomorrow is (B).", MatchResult(False, "Tomorrow is (B).", False)),
])
def test_bbh_cot_options(response, expected):
    assert matchers.match_bbh_cot(DATE, response) == expected


def test_bbh_cot_free_form_drops_trailing_period():
    assert matchers.match_bbh_cot(WORDS, "So the answer is syndrome therefrom.") == MatchResult(True, "syndrome therefrom", True)
    assert matchers.match_bbh_cot(WORDS, "So the answer is therefrom syndrome.").correct is False
    # a whole response equal to the label is correct even without "answer is" (as OpenChat)
    assert matchers.match_bbh_cot(WORDS, "syndrome therefrom") == MatchResult(False, "syndrome therefrom", True)


MMLU = rows("fs_cothub/mmlu/abstract_algebra.jsonl")  # string labels "(C)", "(D)"


def test_mmlu_answer_is_option_with_string_label():
    assert matchers.match_mmlu_cot(MMLU[0], "The index is 24. The answer is (C).") == MatchResult(True, "(C)", True)
    assert matchers.match_mmlu_cot(MMLU[1], "The answer is (D).") == MatchResult(True, "(D)", True)
    assert matchers.match_mmlu_cot(MMLU[1], "The answer is (D), not (A).").answer == "(D)"
    # no "answer is": the "(C)" guess, unmatched; correct only where the label happens to be (C)
    assert matchers.match_mmlu_cot(MMLU[0], "It is 24") == MatchResult(False, "(C)", True)
    assert matchers.match_mmlu_cot(MMLU[1], "It is 0,4") == MatchResult(False, "(C)", False)
    assert matchers.match_mmlu_cot(MMLU[1], "The answer is none of them") == MatchResult(False, "(C)", False)


def test_string_label_is_compared_exactly_not_as_substring():
    # OpenChat: `answer in row["label"]`; with a string label that is a substring test.
    row = {"question": "q", "label": "18"}
    assert "8" in row["label"]  # the bug this guards against
    assert matchers.match_gsm8k(row, "The answer is 8").correct is False
    assert matchers.match_exact(row, "8").correct is False
    assert matchers.match_exact(row, "18").correct is True
    mmlu_like = {"question": "q", "label": "(C)", "options": ["(A)", "(B)", "(C)", "(D)"]}
    assert matchers._result(True, "", mmlu_like).correct is False  # "" in "(C)" is True in OpenChat


GSM = rows("fs_cothub/gsm8k/gsm8k.jsonl")  # labels "18", "2,125", "-10"


@pytest.mark.parametrize(("row", "response", "answer", "correct"), [
    (0, "16 - 3 - 4 = 9 eggs. 9 * 2 = 18 dollars.\nThe answer is 18", "18", True),
    (0, "The answer is 18.00", "18", True),
    (0, "She makes $18.", "18", True),
    (0, "The answer is 8", "8", False),
    (0, "The answer is 180", "180", False),
    (1, "500 + 1500 + 125 = 2,125\nThe answer is 2,125", "2125", True),  # OpenChat: "125"
    (1, "The answer is 2125", "2125", True),  # OpenChat compared "2125" with "2,125"
    (2, "(-48 + 21 - 3) / 3 = -10\nThe answer is -10", "-10", True),  # OpenChat: "10"
    (2, "The answer is 10", "10", False),
    (2, "The answer is -10.5", "-10.5", False),
])
def test_gsm8k_last_number_compared_numerically(row, response, answer, correct):
    assert matchers.match_gsm8k(GSM[row], response) == MatchResult(True, answer, correct)


def test_gsm8k_unmatched_without_numbers():
    assert matchers.match_gsm8k(GSM[0], "I cannot tell.") == MatchResult(False, "", False)


def test_gsm8k_label_with_thousands_separator_in_response_and_label():
    row = {"question": "q", "label": ["1800"]}
    assert matchers.match_gsm8k(row, "The answer is 1,800").correct
    assert matchers.match_gsm8k({"question": "q", "label": ["1,800"]}, "The answer is $1800.").correct
    # a malformed group is not read as a thousands separator
    assert matchers.match_gsm8k(row, "1,8000").answer == "8000"


@pytest.mark.parametrize(("text", "canonical"), [
    ("18", "18"), ("18.0", "18"), ("18.00", "18"), ("1,800", "1800"), ("1,450,000", "1450000"), ("-10", "-10"),
    ("0.50", "0.5"), (".5", "0.5"), ("-0", "0"), ("007", "7"), ("2.125", "2.125"), ("abc", None), ("", None),
])
def test_canonical_number(text, canonical):
    assert canonical_number(text) == canonical


# --- MATH ----------------------------------------------------------------------------------------

MATH = rows("fs_cothub/math/MATH.jsonl")  # answers 144 and \frac{\sqrt{3}}{3}


@pytest.mark.parametrize(("text", "content"), [
    ("so $x = \\boxed{144}$.", "144"),
    ("\\boxed{12} first, then \\boxed{144}", "144"),  # the last one
    ("\\boxed{\\frac{\\sqrt{3}}{3}}", "\\frac{\\sqrt{3}}{3}"),  # nested braces
    ("\\fbox{7}", "7"),
    ("$\\boxed 5$", "5"),
    ("\\boxed{\\frac{1}{2}", None),  # unbalanced
    ("no box here", None),
    ("\\boxed: see {3}", None),  # OpenChat took the later brace group
])
def test_last_boxed_content(text, content):
    assert last_boxed_content(text) == content


def test_math_boxed_and_answer_is_forms():
    assert match_math(MATH[0], "The product is $12^2 = \\boxed{144}$.") == MatchResult(True, "144", True)
    assert match_math(MATH[0], "Thus 144.\nThe answer is $144$") == MatchResult(True, "144", True)
    assert match_math(MATH[0], "\\boxed{144} is wrong, it is \\boxed{12}") == MatchResult(True, "12", False)
    # the few-shot format invites the model to continue; only the answer line is graded
    assert match_math(MATH[0], "The answer is $144$\n\nQuestion: What is $1+1$?").correct
    assert match_math(MATH[0], "The answer is $\\boxed{144}$.").answer == "144"


def test_math_unmatched_response_is_graded_whole():
    assert match_math(MATH[0], "144") == MatchResult(False, "144", True)
    assert match_math(MATH[0], "I do not know") == MatchResult(False, "I do not know", False)


def test_math_nested_fraction_and_normalisation():
    assert match_math(MATH[1], "$\\frac{3}{\\sqrt{27}} = \\boxed{\\frac{\\sqrt{3}}{3}}$").correct
    # \dfrac and \sqrt3 normalise to the same string (Hendrycks' rules; no LaTeX parser needed)
    assert match_math(MATH[1], "The answer is $\\dfrac{\\sqrt3}{3}$").correct
    assert not match_math(MATH[1], "The answer is $\\frac{\\sqrt{3}}{2}$").correct


def test_math_equivalent_forms_need_the_latex_parser(monkeypatch):
    """1/sqrt(3) == sqrt(3)/3 only after LaTeX -> text; without pylatexenc grading is stricter, not broken."""
    def missing():
        raise ImportError("No module named 'pylatexenc'")

    monkeypatch.setattr(math_grader, "_latex_to_text", missing)
    assert math_grader.grade_answer("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}") is False
    assert math_grader.grade_answer("\\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt{3}}{3}") is True
    assert math_grader.grade_answer("0.5", "\\frac{1}{2}") is True
    assert math_grader.grade_answer("(1,2)", "(1, 2)") is True


@pytest.mark.skipif(not math_grader.latex_parser_available(), reason="pylatexenc not installed (optional)")
def test_math_equivalent_forms_with_the_latex_parser():
    assert math_grader.grade_answer("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}") is True


def test_math_extract_answer_variants():
    assert extract_math_answer("The answer is $x=5$.") == (True, "x=5")
    assert extract_math_answer("The answer is") == (True, "")
    assert extract_math_answer("") == (False, "")


# --- exact match (demo) ----------------------------------------------------------------------------

DEMO = rows("demo/exact/basics.jsonl")  # "Paris"; ["5", "five"]; ["red", "blue", "yellow"]


@pytest.mark.parametrize(("row", "response", "expected"), [
    (0, "Paris", MatchResult(True, "Paris", True)),
    (0, " Paris.\nIt is on the Seine.", MatchResult(True, "Paris", True)),
    (0, "paris", MatchResult(True, "paris", False)),  # case matters
    (0, "Par", MatchResult(True, "Par", False)),  # not a substring test
    (0, "The capital is Paris", MatchResult(True, "The capital is Paris", False)),
    (1, "five", MatchResult(True, "five", True)),
    (1, "5.", MatchResult(True, "5", True)),
    (2, "\n\nblue\n", MatchResult(True, "blue", True)),
    (2, "   ", MatchResult(False, "", False)),
    (2, ".", MatchResult(False, "", False)),
])
def test_exact_match(row, response, expected):
    assert matchers.match_exact(DEMO[row], response) == expected


# --- registry --------------------------------------------------------------------------------------

def test_registry_covers_openchat_types():
    assert set(known_task_types()) == {
        "zs/agieval", "zs/bbh_mc_orca", "zs/truthfulqa_orca", "zs/gpqa",
        "fs_cothub/bbh", "fs_cothub/gsm8k", "fs_cothub/mmlu", "fs_cothub/math", "demo/exact", "coding/humaneval"}
    assert match_answer("fs_cothub/gsm8k", GSM[0], "The answer is 18") == MatchResult(True, "18", True)


def test_unknown_task_type_lists_known_ones():
    with pytest.raises(UnknownTaskTypeError) as err:
        get_task_type("fs_cothub/gsm9k")
    message = str(err.value)
    assert "'fs_cothub/gsm9k'" in message and "fs_cothub/gsm8k" in message and "demo/exact" in message
