"""The eval runner: OpenChat-exact prompts, scoring, results folder, summary aggregation, determinism."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from openchat_core.evaluation import runner
from openchat_core.evaluation.eval_data import load_eval_data
from openchat_core.evaluation.generation import Generation
from openchat_core.evaluation.runner import run_generation_eval, strip_first_space
from openchat_core.evaluation.summary import EvalSummary, QuestionResult, aggregate
from tests.unit.eval_models import save_tiny_checkpoint

FIXTURES = Path(__file__).parents[1] / "fixtures" / "eval_data"


class ScriptedGenerator:
    """A `Generator` answering from a script (question substring -> text), recording the prompts it got."""

    name = "scripted"

    def __init__(self, tokenizer: Any, script: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        self.script = script
        self.prompts: list[list[int]] = []

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name}

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[Generation]:
        self.prompts = [list(p) for p in prompts]
        out = []
        for prompt in prompts:
            text = self.tokenizer.decode(list(prompt))
            reply = next((r for key, r in self.script.items() if key in text), " no idea")
            out.append(Generation(reply, (1, 2, 32000), "stop"))
        return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("eval-runner") / "ckpt")


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    from openchat_core.templates.tokenizers import load_tokenizer

    return load_tokenizer(checkpoint)


SCRIPT = {
    "capital of France": " Paris.",  # correct (leading space stripped, period dropped)
    "What is 2 + 3": " 6",  # wrong
    "primary colour": "  blue",  # only the first space is stripped: the answer line is still "blue"
    "Janet’s ducks": " 16 - 3 - 4 = 9, 9 * 2 = 18.\nThe answer is 18",  # correct
    "Johnny is picking up": " The answer is 2,125",  # correct (OpenChat: wrong)
    "Southlandia": " I am not sure.",  # unmatched
}


def test_strip_first_space():
    assert [strip_first_space(s) for s in (" a", "  a", "a", "", " ")] == ["a", " a", "a", "", ""]


def test_scores_and_summary_from_scripted_answers(tmp_path, checkpoint, tokenizer):
    engine = ScriptedGenerator(tokenizer, SCRIPT)
    result = run_generation_eval(checkpoint, FIXTURES, ["demo", "fs_cothub/gsm8k"], out_dir=tmp_path / "out",
                                 engine=engine, max_new_tokens=64)
    results = [QuestionResult.model_validate_json(line) for line in result.results_path.read_text().splitlines()]
    assert [(r.task_name, r.line) for r in results] == [
        ("demo/exact/basics", 1), ("demo/exact/basics", 2), ("demo/exact/basics", 3),
        ("fs_cothub/gsm8k/gsm8k", 1), ("fs_cothub/gsm8k/gsm8k", 2), ("fs_cothub/gsm8k/gsm8k", 3)]
    assert [r.correct for r in results] == [True, False, True, True, True, False]
    assert [r.matched for r in results] == [True, True, True, True, True, False]
    assert results[0].response == "Paris." and results[0].answer == "Paris"
    assert results[2].response == " blue"
    assert results[4].answer == "2125" and results[4].label == ["2,125"]
    assert results[0].output_token_ids == [1, 2, 32000] and results[0].finish_reason == "stop"

    s = EvalSummary.model_validate_json(result.summary_path.read_text())
    assert s == result.summary
    assert (s.overall.n, s.overall.correct, s.overall.matched) == (6, 4, 5)
    assert s.task_types["demo/exact"].accuracy == pytest.approx(2 / 3)
    assert s.task_types["fs_cothub/gsm8k"].unmatched_rate == pytest.approx(1 / 3)
    assert s.tasks["fs_cothub/gsm8k/gsm8k"].correct == 2
    assert s.condition == "GPT4 Correct"  # empty condition -> the model type's inference condition
    assert s.eval_data_digest == load_eval_data(FIXTURES, ["demo", "fs_cothub/gsm8k"]).digest
    assert s.finish_reasons == {"stop": 6} and s.truncated_prompts == 0 and s.data_issues == 0
    assert s.model_type == "openchat_v3.2_mistral" and s.engine == "scripted"  # openchat_3.5 is its alias


def test_prompts_are_openchat_inference_prompts(tmp_path, checkpoint, tokenizer):
    from openchat_core.templates.conversation import ConversationTemplate

    engine = ScriptedGenerator(tokenizer, SCRIPT)
    run_generation_eval(checkpoint, FIXTURES, ["demo"], out_dir=tmp_path, engine=engine, condition="Math Correct",
                        system="Be brief.", max_new_tokens=16)
    template = ConversationTemplate.from_tokenizer("openchat_3.5", tokenizer)
    expected = template.prompt_ids([{"role": "user", "content": "What is the capital of France? Answer with one word."}],
                                   "Math Correct", "Be brief.")
    assert engine.prompts[0] == expected
    assert expected.count(32000) == 2  # system EOT, user EOT; the assistant turn stays open
    assert expected[-len(template.role_prefix_ids("assistant", "Math Correct")):] == template.role_prefix_ids(
        "assistant", "Math Correct")


def test_long_prompts_are_left_truncated_to_leave_room_for_the_answer(tmp_path, checkpoint, tokenizer):
    small = tmp_path / "small-context"
    shutil.copytree(checkpoint, small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 256}))
    engine = ScriptedGenerator(tokenizer, SCRIPT)
    result = run_generation_eval(small, FIXTURES, ["fs_cothub/gsm8k", "demo"], out_dir=tmp_path / "out", engine=engine,
                                 max_new_tokens=56)
    assert result.summary.truncated_prompts == 3  # the 8-shot GSM8K prompts, not the short demo ones
    assert all(len(p) <= 200 for p in engine.prompts)
    assert tokenizer.decode(engine.prompts[-1][-8:]).endswith("GPT4 Correct Assistant:")  # the end is kept
    assert any("truncated" in n for n in result.summary.notes)
    with pytest.raises(ValueError, match="no room for a prompt"):
        run_generation_eval(small, FIXTURES, ["demo"], out_dir=tmp_path / "x", engine=engine, max_new_tokens=256)


def test_bad_rows_are_reported_and_scoring_errors_recorded(tmp_path, checkpoint, tokenizer, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(FIXTURES / "demo", root / "demo")
    with (root / "demo/exact/basics.jsonl").open("a") as f:
        f.write('{"question": "no label"}\n')
    out = tmp_path / "out"
    result = run_generation_eval(checkpoint, root, out_dir=out, engine=ScriptedGenerator(tokenizer, SCRIPT),
                                 max_new_tokens=16)
    assert result.summary.data_issues == 1 and result.summary.overall.n == 3
    issue = json.loads((out / runner.ISSUES_FILE).read_text())
    assert issue["line"] == 4 and issue["field"] == "label"

    class Exploding:
        def match(self, row, response):
            raise RuntimeError("boom")

    monkeypatch.setattr(runner, "get_task_type", lambda name: Exploding())
    (root / "demo/exact/basics.jsonl").write_text((FIXTURES / "demo/exact/basics.jsonl").read_text())
    result = run_generation_eval(checkpoint, root, out_dir=out, engine=ScriptedGenerator(tokenizer, SCRIPT),
                                 max_new_tokens=16)
    assert result.summary.scoring_errors == 3 and result.results[0].error == "RuntimeError: boom"
    assert not (out / runner.ISSUES_FILE).exists()  # the stale issues file of the first run is gone


def test_aggregate_micro_and_macro():
    def r(task: str, correct: bool, matched: bool = True) -> QuestionResult:
        return QuestionResult(task_name=f"t/x/{task}", task_type="t/x", line=1, question="q", label="a", response="",
                              answer="", matched=matched, correct=correct, finish_reason="stop", prompt_tokens=1,
                              output_token_ids=[])

    overall, types, tasks = aggregate([r("a", True), r("a", False, matched=False), r("b", True)])
    assert overall.accuracy == pytest.approx(2 / 3) and overall.unmatched_rate == pytest.approx(1 / 3)
    assert types["t/x"].accuracy == pytest.approx(2 / 3)  # over questions, as OpenChat's view_results
    assert types["t/x"].macro_accuracy == pytest.approx(0.75)  # over tasks: (1/2 + 1) / 2
    assert (types["t/x"].tasks, tasks["t/x/a"].n, tasks["t/x/b"].accuracy) == (2, 2, 1.0)


def test_real_engine_end_to_end_is_deterministic(tmp_path, checkpoint):
    """The transformers engine on the tiny random model: files written, same summary bytes twice."""
    kwargs = dict(eval_sets=["demo", "zs/agieval"], engine="transformers", max_new_tokens=8)
    first = run_generation_eval(checkpoint, FIXTURES, out_dir=tmp_path / "a", **kwargs)
    run_generation_eval(checkpoint, FIXTURES, out_dir=tmp_path / "b", **kwargs)
    assert first.summary.overall.n == 5 and first.summary.engine == "transformers"
    assert first.summary.finish_reasons == {"length": 5}  # a random model never says <|end_of_turn|>
    assert (tmp_path / "a/summary.json").read_bytes() == (tmp_path / "b/summary.json").read_bytes()
    assert (tmp_path / "a/results.jsonl").read_bytes() == (tmp_path / "b/results.jsonl").read_bytes()
    assert json.loads((tmp_path / "a/timings.json").read_text())["generated_tokens"] == 40
