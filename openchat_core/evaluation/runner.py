"""Generation eval of one checkpoint: eval sets -> prompts -> greedy answers -> scores -> results folder.

What OpenChat's `run_eval.py` does, without its global state and with its results made
comparable: prompts are the inference template for one user turn under a condition (empty = the
model type's inference condition) and system prompt, truncated from the left; answers are greedy
and end at EOT; the first space of each response is stripped; each task type's matcher scores.

Deviation: prompts are truncated to `context - max_new_tokens` tokens (OpenChat: `context`), so
every question has room for its answer on both engines; `summary.json` counts truncated prompts.

Writes to `out_dir` (each file atomically):
- `results.jsonl`: one `QuestionResult` per question, in eval-data order;
- `summary.json`: `EvalSummary` (scores, digests, settings; no timings, so it is deterministic);
- `data_issues.jsonl`: skipped rows, when there are any;
- `timings.json`: wall times and engine details of this run;
- `evalplus/<task>/samples.jsonl` (+ `problems.jsonl`): coding answers in EvalPlus's format.

Coding tasks (`coding/humaneval`): the matcher extracts a program; `score_code` runs each one in
the sandbox (evaluation/coding) and a question is correct when it passes the base tests.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openchat_core.atomic import write_text_atomic
from openchat_core.evaluation import task_types
from openchat_core.evaluation.eval_data import EvalData, EvalDataIssue, EvalQuestion, load_eval_data
from openchat_core.evaluation.generation import Generation, Generator
from openchat_core.evaluation.generators import make_generator
from openchat_core.evaluation.summary import CodingScore, EvalSummary, QuestionResult, aggregate, finish_reason_counts
from openchat_core.evaluation.task_types import get_task_type
from openchat_core.models.checkpoint import checkpoint_model_type, context_limit

if TYPE_CHECKING:
    from openchat_core.evaluation.coding.scoring import CodingOptions

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
ISSUES_FILE = "data_issues.jsonl"
TIMINGS_FILE = "timings.json"


@dataclass(frozen=True)
class EvalResult:
    out_dir: Path
    summary: EvalSummary
    results: tuple[QuestionResult, ...]
    issues: tuple[EvalDataIssue, ...]
    timings: dict[str, Any]

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS_FILE

    @property
    def summary_path(self) -> Path:
        return self.out_dir / SUMMARY_FILE


def strip_first_space(text: str) -> str:
    """OpenChat's `_strip_first_space`: the answer's leading space belongs to the prompt's last word boundary."""
    return text[1:] if text.startswith(" ") else text


def build_prompts(template: Any, questions: Sequence[EvalQuestion], condition: str, system: str,
                  max_prompt_tokens: int) -> tuple[list[list[int]], int]:
    """Inference prompt ids per question (one user turn), left-truncated; and how many were truncated."""
    prompts, truncated = [], 0
    for q in questions:
        ids = template.prompt_ids([{"role": "user", "content": q.question}], condition, system)
        if len(ids) > max_prompt_tokens:
            ids = ids[-max_prompt_tokens:]
            truncated += 1
        prompts.append(ids)
    return prompts, truncated


def prompts_digest(prompts: Sequence[Sequence[int]]) -> str:
    h = hashlib.sha256()
    for prompt in prompts:
        h.update(json.dumps(list(prompt), separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def score_question(question: EvalQuestion, generation: Generation, prompt_tokens: int) -> QuestionResult:
    """Match one response with its task type's matcher; a matcher crash is recorded, not raised."""
    response = strip_first_space(generation.text)
    error = None
    try:
        match = get_task_type(question.task_type).match(question.row, response)
        matched, answer, correct = match.matched, match.answer, match.correct
    except Exception as exc:  # one odd response must not lose an evaluation run
        matched, answer, correct, error = False, "", False, f"{type(exc).__name__}: {exc}"
    return QuestionResult(task_name=question.task_name, task_type=question.task_type, line=question.line,
                          question=question.question, label=question.label, response=response, answer=answer,
                          matched=matched, correct=correct, finish_reason=generation.finish_reason,
                          prompt_tokens=prompt_tokens, output_token_ids=list(generation.token_ids), error=error)


def code_problems(questions: Sequence[EvalQuestion], options: CodingOptions | None) -> dict[int, dict[str, Any]]:
    """Question index -> the problem its program is scored on, for code-executing task types.

    Resolved before generation, so a bad `--humaneval-plus` file fails in seconds, not after an hour.
    """
    indices = [i for i, q in enumerate(questions) if task_types.get_task_type(q.task_type).executes_code]
    if not indices:
        return {}
    from openchat_core.evaluation.coding.scoring import CodingOptions, resolve_problems

    problems = resolve_problems([questions[i].row["_metadata"] for i in indices], options or CodingOptions())
    return dict(zip(indices, problems, strict=True))


def score_code(questions: Sequence[EvalQuestion], results: list[QuestionResult], problems: dict[int, dict[str, Any]],
               out: Path, options: CodingOptions | None
               ) -> tuple[list[QuestionResult], dict[str, CodingScore], dict[str, Any] | None]:
    """Run the extracted programs (`problems` from `code_problems`) in the sandbox; correct = passes the base tests.

    Also writes each coding task's EvalPlus `samples.jsonl`. Returns the updated results, pass@1 per
    task, and the sandbox settings with the isolation that held (None when no coding task ran).
    """
    if not problems:
        return results, {}, None
    from openchat_core.evaluation.coding.scoring import CodingOptions, execute_solutions, pass_rates, write_evalplus_samples

    options = options or CodingOptions()
    indices = list(problems)
    outcomes = dict(zip(indices, execute_solutions([problems[i] for i in indices], [results[i].answer for i in indices],
                                                   options), strict=True))
    updated = list(results)
    by_task: dict[str, list[int]] = {}
    for i, outcome in outcomes.items():
        execution = {"task_id": problems[i]["task_id"], "base": outcome.base, "plus": outcome.plus,
                     "error": outcome.error, "wall_s": outcome.wall_s}
        updated[i] = results[i].model_copy(update={"correct": outcome.base == "pass", "execution": execution})
        by_task.setdefault(questions[i].task_name, []).append(i)
    scores = {}
    for task, task_indices in sorted(by_task.items()):
        scores[task] = CodingScore(**pass_rates([outcomes[i] for i in task_indices]))
        write_evalplus_samples(out, task, [problems[i] for i in task_indices], [results[i].answer for i in task_indices])
    isolation = sorted({json.dumps(o.isolation, sort_keys=True) for o in outcomes.values() if o.isolation})
    sandbox = {**options.describe(), "isolation": [json.loads(x) for x in isolation]}
    return updated, scores, sandbox


def _coding_notes(scores: dict[str, CodingScore], sandbox: dict[str, Any] | None) -> list[str]:
    notes = []
    for task, score in scores.items():
        if score.n_plus < score.n:
            notes.append(f"{task}: {score.n - score.n_plus} of {score.n} problems have no HumanEval+ inputs, so pass@1 on "
                         f"plus tests is not reported; give a local HumanEvalPlus file with --humaneval-plus PATH "
                         f"(config: eval.humaneval_plus)")
    for isolation in (sandbox or {}).get("isolation", []):
        weak = [f"{k}={v}" for k, v in isolation.items() if v in ("python-socket-block", "process-group", "same-user")]
        if weak:
            notes.append(f"coding sandbox ran with weaker isolation ({', '.join(weak)}); see README, Coding eval")
    return notes


def _notes(data: EvalData, results: Sequence[QuestionResult], truncated: int, max_new_tokens: int) -> list[str]:
    notes = []
    if any(q.task_type == "fs_cothub/math" for q in data.questions):
        from openchat_core.evaluation.grading.math_grader import latex_parser_available

        if not latex_parser_available():
            notes.append("pylatexenc is not installed: MATH answers are graded without LaTeX-to-text conversion, "
                         "stricter than OpenChat on some equivalent forms (pip install pylatexenc)")
    if data.issues:
        notes.append(f"{len(data.issues)} eval row(s) skipped as invalid; see {ISSUES_FILE}")
    if truncated:
        notes.append(f"{truncated} prompt(s) left-truncated to fit the context")
    capped = sum(r.finish_reason == "length" for r in results)
    if capped:
        notes.append(f"{capped} of {len(results)} answers hit max_new_tokens={max_new_tokens} before EOT")
    return notes


def run_generation_eval(model_dir: Path | str, eval_data_root: Path | str, eval_sets: Sequence[str] = (), *,
                        out_dir: Path | str, condition: str = "", system: str = "",
                        engine: str | Generator = "auto", max_new_tokens: int,
                        limit_per_task: int | None = None, model_type: str | None = None,
                        strict_data: bool = False, engine_options: dict[str, Any] | None = None,
                        coding: CodingOptions | None = None) -> EvalResult:
    """Evaluate a checkpoint on the selected eval sets and write the results folder (see module docstring).

    `engine` is "auto" | "vllm" | "transformers", or a ready `Generator` (e.g. one wrapping a model
    already in memory). `condition=""` uses the model type's inference condition, as OpenChat.
    `coding`: sandbox limits and HumanEval+ source for coding tasks (defaults when None).
    """
    from openchat_core.models.checkpoint import checkpoint_template
    from openchat_core.templates.tokenizers import load_tokenizer

    timings: dict[str, Any] = {}
    started = time.perf_counter()
    model_path = Path(model_dir)
    out = Path(out_dir)
    mtype = checkpoint_model_type(model_path, model_type).name
    limit = context_limit(model_path, mtype)
    if max_new_tokens >= limit:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {limit}-token context")
    data = load_eval_data(eval_data_root, eval_sets, limit_per_task=limit_per_task, strict=strict_data)
    problems = code_problems(data.questions, coding)
    template = checkpoint_template(model_path, mtype, load_tokenizer(model_path))
    resolved_condition = condition or template.model_type.inference_condition
    prompts, truncated = build_prompts(template, data.questions, resolved_condition, system, limit - max_new_tokens)
    timings["prepare_s"] = round(time.perf_counter() - started, 3)

    generator = engine if not isinstance(engine, str) else make_generator(
        engine, model_path, model_type=mtype, **(engine_options or {}))
    t0 = time.perf_counter()
    generations = generator.generate(prompts, max_new_tokens)
    timings["generate_s"] = round(time.perf_counter() - t0, 3)
    if len(generations) != len(prompts):
        raise RuntimeError(f"engine {generator.name} returned {len(generations)} generations for {len(prompts)} prompts")

    t0 = time.perf_counter()
    results = [score_question(q, g, len(p)) for q, g, p in zip(data.questions, generations, prompts, strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    results, coding_scores, sandbox = score_code(data.questions, results, problems, out, coding)
    timings["score_s"] = round(time.perf_counter() - t0, 3)
    overall, task_types, tasks = aggregate(results)
    summary = EvalSummary(
        model_path=str(model_path), model_type=mtype, engine=generator.name, engine_info=generator.describe(),
        condition=resolved_condition, system=system, max_new_tokens=max_new_tokens,
        eval_data_root=str(data.root), eval_sets=list(data.eval_sets), limit_per_task=limit_per_task,
        eval_data_digest=data.digest, prompts_digest=prompts_digest(prompts), overall=overall,
        task_types=task_types, tasks=tasks, finish_reasons=finish_reason_counts(results),
        truncated_prompts=truncated, data_issues=len(data.issues),
        scoring_errors=sum(r.error is not None for r in results),
        notes=_notes(data, results, truncated, max_new_tokens) + _coding_notes(coding_scores, sandbox),
        coding=coding_scores, sandbox=sandbox)

    write_text_atomic(out / RESULTS_FILE, "".join(r.model_dump_json() + "\n" for r in results))
    if data.issues:
        write_text_atomic(out / ISSUES_FILE, "".join(json.dumps(asdict(i)) + "\n" for i in data.issues))
    else:
        (out / ISSUES_FILE).unlink(missing_ok=True)  # from an earlier run into the same folder
    write_text_atomic(out / SUMMARY_FILE, summary.model_dump_json(indent=2) + "\n")
    timings["total_s"] = round(time.perf_counter() - started, 3)
    timings["generated_tokens"] = sum(len(r.output_token_ids) for r in results)
    timings["engine_run"] = getattr(generator, "last_run", {})
    write_text_atomic(out / TIMINGS_FILE, json.dumps(timings, indent=2) + "\n")
    return EvalResult(out_dir=out, summary=summary, results=tuple(results), issues=data.issues, timings=timings)
