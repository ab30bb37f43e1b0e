"""Coding eval: code extraction, execution scoring (base / plus), the sandbox against hostile answers, EvalPlus export."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from openchat_core.evaluation.coding.extract import extract_solution
from openchat_core.evaluation.coding.problems import HumanEvalPlusError, load_humaneval_plus, sandbox_job
from openchat_core.evaluation.coding.sandbox import SandboxLimits, run_job
from openchat_core.evaluation.coding.scoring import (CodingOptions, execute_solutions, pass_rates, resolve_problems,
                                                     write_evalplus_samples)
from openchat_core.evaluation.eval_data import load_eval_data

ROOT = Path(__file__).parents[1] / "fixtures" / "coding" / "eval_data"
ROWS = [json.loads(line) for line in (ROOT / "coding/humaneval/humaneval.jsonl").read_text(encoding="utf-8").splitlines()]
TRIANGLE, ADD = ROWS[0]["_metadata"], ROWS[1]["_metadata"]
LIMITS = SandboxLimits(timeout_s=8, memory_mb=512, per_test_s=2)


def test_fixture_rows_load_as_coding_tasks():
    data = load_eval_data(ROOT, strict=True)
    assert [(q.task_type, q.row["_metadata"]["task_id"]) for q in data.questions] == [
        ("coding/humaneval", "HumanEval/45"), ("coding/humaneval", "HumanEval/53")]


def test_a_row_without_tests_is_reported_with_its_field(tmp_path):
    bad = {**ROWS[1], "_metadata": {k: v for k, v in ADD.items() if k not in ("plus_input", "test")}}
    path = tmp_path / "coding/humaneval/h.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    data = load_eval_data(tmp_path)
    assert len(data.questions) == 1
    assert [(i.line, i.field) for i in data.issues] == [(2, "_metadata.test")]
    assert "--humaneval-plus" in data.issues[0].message


# --- extraction (OpenChat's rules) ---

def test_extracts_a_fenced_block_with_prose_around_it():
    answer = ("Sure! Here is the function:\n```python\ndef add(x: int, y: int):\n    return x + y\n```\n"
              "It adds the two numbers. Example:\n```\n>>> add(1, 2)\n```")
    code = extract_solution(ADD, answer)
    assert code.matched and code.solution == "\n\ndef add(x: int, y: int):\n    return x + y"  # prompt has no imports


def test_extracts_a_bare_function_and_keeps_the_prompt_imports():
    meta = {"prompt": "from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    \"\"\"doc\"\"\"\n", "entry_point": "f"}
    code = extract_solution(meta, "def f(xs: List[int]) -> int:\n    return sum(xs)\n")
    assert code.matched and code.solution == "from typing import List\n\ndef f(xs: List[int]) -> int:\n    return sum(xs)\n"


def test_a_body_only_answer_is_completed_with_the_prompt():
    code = extract_solution(ADD, "```\n    return x + y\n```")
    assert code.matched and code.solution == ADD["prompt"] + "    return x + y"


def test_skips_blocks_that_do_not_parse_or_miss_the_entry_point():
    answer = "```\ndef add(x, y)\n    oops\n```\n```\ndef other():\n    pass\n```\n```python\ndef add(x, y):\n    return x + y\n```"
    assert extract_solution(ADD, answer).solution.endswith("def add(x, y):\n    return x + y")


def test_an_answer_without_the_function_is_unmatched_and_kept_raw():
    code = extract_solution(ADD, "You can add them with the plus operator.")
    assert not code.matched and code.solution == "You can add them with the plus operator."


# --- scoring ---

def _run(problem, code, limits=LIMITS):
    return run_job(sandbox_job(problem, code), limits)


def test_correct_and_wrong_solutions_on_base_and_plus_tests():
    correct = _run(ADD, ADD["prompt"] + ADD["canonical_solution"])
    wrong = _run(TRIANGLE, "def triangle_area(a, h):\n    return a * h\n")
    base_only = _run(ADD, "def add(x, y):\n    return x + y if x >= 0 else 0\n")  # base inputs are all >= 0; plus has negatives
    assert (correct.base, correct.plus, correct.error) == ("pass", "pass", None)
    assert (wrong.base, wrong.plus) == ("fail", "fail")
    assert (base_only.base, base_only.plus) == ("pass", "fail") and base_only.error.startswith("plus tests")
    assert pass_rates([correct, wrong, base_only]) == {
        "n": 3, "pass_base": 2, "pass1_base": 2 / 3, "n_plus": 3, "pass_plus": 1, "pass1_plus": 1 / 3,
        "verdicts": {"fail": 1, "pass": 2}}


def test_without_plus_inputs_the_base_is_humaneval_check_and_plus_is_not_run():
    humaneval_only = {k: v for k, v in ADD.items() if k not in ("base_input", "plus_input")}
    good = _run(humaneval_only, "def add(x, y):\n    return x + y\n")
    bad = _run(humaneval_only, "def add(x, y):\n    return x - y\n")
    assert (good.base, good.plus) == ("pass", None)
    assert (bad.base, bad.plus) == ("fail", None) and bad.error.startswith("AssertionError")


def test_a_local_humaneval_plus_file_replaces_the_rows_problems(tmp_path):
    plus_file = tmp_path / "HumanEvalPlus.jsonl"
    plus_file.write_text(json.dumps({**ADD, "plus_input": [[2, 2]]}) + "\n", encoding="utf-8")
    options = CodingOptions(humaneval_plus=plus_file, limits=LIMITS)
    problems = resolve_problems([ADD, TRIANGLE], options)
    assert problems[0]["plus_input"] == [[2, 2]] and problems[1] == TRIANGLE
    [outcome] = execute_solutions(problems[:1], ["def add(x, y):\n    return x + y if x >= 0 else 0\n"], options)
    assert (outcome.base, outcome.plus) == ("pass", "pass")  # the negative plus inputs are gone
    with pytest.raises(HumanEvalPlusError, match="--humaneval-plus"):
        load_humaneval_plus(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"task_id": "HumanEval/0"}\n')
    with pytest.raises(HumanEvalPlusError, match="bad.jsonl:1: missing prompt"):
        load_humaneval_plus(tmp_path / "bad.jsonl")


def test_evalplus_samples_export_reads_back_with_evalplus(tmp_path):
    from evalplus.data.utils import completeness_check, load_solutions, stream_jsonl

    solutions = [ADD["prompt"] + ADD["canonical_solution"], "def triangle_area(a, h):\n    return 0\n"]
    samples = write_evalplus_samples(tmp_path, "coding/humaneval/humaneval", [ADD, TRIANGLE], solutions)
    read = list(load_solutions(str(samples)))
    assert [(s["task_id"], s["solution"]) for s in read] == [("HumanEval/53", solutions[0]), ("HumanEval/45", solutions[1])]
    problems = {p["task_id"]: p for p in stream_jsonl(str(samples.with_name("problems.jsonl")))}
    completeness_check("HumanEval+", problems)  # what evalplus.evaluate checks before scoring
    assert problems["HumanEval/53"]["plus_input"] == ADD["plus_input"]


# --- the sandbox against hostile answers ---

HOSTILE = {
    "loop": "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n",
    "allocate": "blocks = []\nwhile True:\n    blocks.append(bytearray(10**8))\n",
    "fork_bomb": "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()\n",
    "network": ("import ctypes, socket, struct\nlibc = ctypes.CDLL(None)\nfd = libc.socket(2, 1, 0)\n"
                "addr = struct.pack('<HH4s8x', 2, socket.htons(53), bytes([8, 8, 8, 8]))\n"
                "assert libc.connect(fd, addr, 16) == 0, 'no route'\n"),
}


def _delete_answer(victim: Path) -> str:
    return (f"import os, shutil, ctypes\n"
            f"for attempt in (lambda: os.remove({str(victim)!r}), lambda: shutil.rmtree({str(victim.parent)!r}),\n"
            f"                lambda: ctypes.CDLL(None).unlink({str(victim).encode()!r})):\n"
            f"    try:\n        attempt()\n    except Exception:\n        pass\n")


def test_hostile_answers_each_fail_alone_and_the_run_goes_on(tmp_path):
    victim = tmp_path / "keep" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    correct = ADD["prompt"] + ADD["canonical_solution"]
    answers = {name: code + "\ndef add(x, y):\n    return x + y\n" for name, code in HOSTILE.items()}
    answers["delete"] = _delete_answer(victim) + "\ndef add(x, y):\n    return x + y\n"
    names = [*answers, "correct"]
    options = CodingOptions(limits=SandboxLimits(timeout_s=4, memory_mb=512, max_processes=16), workers=2)
    outcomes = dict(zip(names, execute_solutions([ADD] * len(names), [*answers.values(), correct], options), strict=True))

    assert (outcomes["correct"].base, outcomes["correct"].plus) == ("pass", "pass")
    assert outcomes["loop"].base == "timeout" and "time limit" in outcomes["loop"].error
    assert outcomes["allocate"].base == "fail"  # MemoryError at load: the solution never ran
    assert outcomes["fork_bomb"].base == "timeout"  # forks until killed; RLIMIT_NPROC caps it meanwhile
    assert outcomes["network"].base == "fail" and outcomes["network"].isolation["network"] == "netns"
    assert outcomes["delete"].base == "pass"  # it did nothing harmful in the end, and add() is right
    assert victim.read_text() == "precious"  # os.remove/rmtree are disabled by the guard; unlink(2) by the user drop
    if os.geteuid() == 0:
        assert {o.isolation["user"] for o in outcomes.values() if o.isolation} == {"unprivileged"}
        deadline = time.monotonic() + 10  # SIGKILLed processes leave the process table asynchronously
        while _sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _sandbox_processes() == []  # the fork bomb's processes died with their PID namespace


def _sandbox_processes() -> list[int]:
    """Processes still running (not zombies) under a sandbox uid (see sandbox.SANDBOX_UID_BASE)."""
    from openchat_core.evaluation.coding.sandbox import SANDBOX_UID_BASE

    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) >= SANDBOX_UID_BASE and fields["State"].split()[0] not in ("Z", "X"):
            found.append(int(status.parent.name))
    return found


# --- through the runner: results, summary, metrics, view ---

def test_runner_scores_coding_answers_and_reports_pass_at_1(tmp_path):
    from openchat_core.evaluation.runner import run_generation_eval
    from openchat_core.evaluation.summary import coding_type_scores
    from openchat_core.evaluation.view import load_runs, render_markdown
    from openchat_core.templates.tokenizers import load_tokenizer
    from tests.unit.eval_models import save_tiny_checkpoint
    from tests.unit.test_eval_runner import ScriptedGenerator

    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    script = {"triangle_area": " ```python\ndef triangle_area(a, h):\n    return a * h / 2\n```",  # right
              "def add": " Use `x + y`."}  # no function: unmatched, fails
    result = run_generation_eval(checkpoint, ROOT, out_dir=tmp_path / "out", max_new_tokens=16,
                                 engine=ScriptedGenerator(load_tokenizer(checkpoint), script),
                                 coding=CodingOptions(limits=LIMITS))
    triangle, add = result.results
    assert (triangle.matched, triangle.correct, triangle.execution["base"], triangle.execution["plus"]) == (True, True, "pass", "pass")
    assert (add.matched, add.correct, add.execution["base"]) == (False, False, "fail")
    assert add.answer == add.response == "Use `x + y`."
    score = result.summary.coding["coding/humaneval/humaneval"]
    assert (score.n, score.pass1_base, score.pass1_plus) == (2, 0.5, 0.5)
    assert result.summary.task_types["coding/humaneval"].accuracy == 0.5
    assert coding_type_scores(result.summary) == {"coding/humaneval": {"pass1_base": 0.5, "pass1_plus": 0.5}}  # MLflow: gen/<type>/<key>
    view = render_markdown(load_runs([result.out_dir]))
    assert "| out | coding/humaneval/humaneval | 2 | 50.0 | 50.0 |" in view
    assert (result.out_dir / "evalplus/coding/humaneval/humaneval/samples.jsonl").is_file()


def test_a_missing_humaneval_plus_file_fails_before_generation(tmp_path):
    from openchat_core.evaluation.runner import run_generation_eval
    from tests.unit.eval_models import save_tiny_checkpoint

    class NeverCalled:
        name = "never"

        def generate(self, prompts, max_new_tokens):
            raise AssertionError("generation started before the HumanEvalPlus file was checked")

    with pytest.raises(HumanEvalPlusError, match="--humaneval-plus PATH.*missing.jsonl is not a file"):
        run_generation_eval(save_tiny_checkpoint(tmp_path / "ckpt"), ROOT, out_dir=tmp_path / "out", engine=NeverCalled(), max_new_tokens=8,
                            coding=CodingOptions(humaneval_plus=tmp_path / "missing.jsonl"))


def test_without_evalplus_the_error_says_how_to_install_it(monkeypatch):
    import importlib.util

    from openchat_core.evaluation.coding.scoring import EvalPlusMissingError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "evalplus" else real(name, *a))
    with pytest.raises(EvalPlusMissingError, match="pip install --no-deps evalplus==0.3.1"):
        resolve_problems([ADD], CodingOptions())
