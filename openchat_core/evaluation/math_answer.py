"""MATH (few-shot CoT): extract the final answer from a response and grade it against the boxed solution.

Follows OpenChat's `fs_cothub_math_match_answer`: the ground truth is the last `\\boxed{...}` of
the row's `_metadata.solution`; the model's answer is the text after its last "The answer is",
else its last `\\boxed{...}`; grading is PRM800K's `grade_answer` on at most 256 characters
(sympy can take very long on long inputs). An unmatched response is graded whole, as OpenChat does
(a bare "5" is still a correct answer).

Deviations from OpenChat, each because the original graded text that is not the answer:
- after "The answer is", only the first line is kept, without a trailing period and surrounding
  `$`: the few-shot exemplars end "The answer is $x$\\n\\nQuestion: ...", and a model that keeps
  going would otherwise have its next question graded as part of the answer;
- a `\\boxed{...}` inside that text is unwrapped;
- `\\boxed 5` (no braces, valid LaTeX) is read as "5"; OpenChat took the next brace group anywhere
  later in the text. The row's `label` field (`[true]` in OpenChat's file) is not used.
"""

from __future__ import annotations

from openchat_core.evaluation.grading.math_grader import grade_answer
from openchat_core.evaluation.matchers import MatchResult, Row

MAX_GRADED_CHARS = 256
_ANSWER_MARKER = "The answer is"


def last_boxed_content(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces included; None if absent."""
    idx = text.rfind("\\boxed")
    command = "\\boxed"
    if idx < 0:
        idx = text.rfind("\\fbox")
        command = "\\fbox"
        if idx < 0:
            return None
    after = idx + len(command)
    if text.startswith(" ", after):  # "\boxed 5": the argument is the next token
        rest = text[after:].strip()
        token = rest.split("$")[0].split()
        return token[0] if token else None
    depth = 0
    start = None
    for i in range(after, len(text)):
        if text[i] == "{":
            depth += 1
            if start is None:
                start = i
        elif text[i] == "}":
            depth -= 1
            if depth == 0 and start is not None:
                return text[start + 1: i].strip()
        elif start is None and not text[i].isspace():
            return None  # "\boxed" not followed by a brace group
    return None


def ground_truth_answer(row: Row) -> str | None:
    """The reference answer of a MATH row: the last boxed expression of its solution."""
    metadata = row.get("_metadata")
    solution = metadata.get("solution") if isinstance(metadata, dict) else None
    return last_boxed_content(solution) if isinstance(solution, str) else None


def _strip_math_delimiters(text: str) -> str:
    text = text.strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text


def extract_math_answer(response: str) -> tuple[bool, str]:
    """(matched, answer text) from a MATH response."""
    parts = response.split(_ANSWER_MARKER)
    if len(parts) > 1:
        lines = parts[-1].strip().splitlines()
        answer = _strip_math_delimiters(lines[0] if lines else "")
        boxed = last_boxed_content(answer)
        return True, boxed if boxed is not None else answer
    boxed = last_boxed_content(response)
    if boxed:
        return True, boxed
    return False, response


def match_math(row: Row, response: str) -> MatchResult:
    truth = ground_truth_answer(row)
    if truth is None:
        raise ValueError("MATH row has no \\boxed{...} answer in _metadata.solution (validate rows when loading)")
    matched, answer = extract_math_answer(response)
    return MatchResult(matched=matched, answer=answer, correct=grade_answer(answer[:MAX_GRADED_CHARS], truth))
