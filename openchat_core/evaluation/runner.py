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
- `timings.json`: wall times and engine details of this run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openchat_core.atomic import write_text_atomic
from openchat_core.evaluation.eval_data import EvalData, EvalDataIssue, EvalQuestion, load_eval_data
from openchat_core.evaluation.generation import Generation, Generator
from openchat_core.evaluation.generators import make_generator
from openchat_core.evaluation.summary import EvalSummary, QuestionResult, aggregate, finish_reason_counts
from openchat_core.evaluation.task_types import get_task_type
from openchat_core.models.checkpoint import checkpoint_model_type, context_limit

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
                        strict_data: bool = False, engine_options: dict[str, Any] | None = None) -> EvalResult:
    """Evaluate a checkpoint on the selected eval sets and write the results folder (see module docstring).

    `engine` is "auto" | "vllm" | "transformers", or a ready `Generator` (e.g. one wrapping a model
    already in memory). `condition=""` uses the model type's inference condition, as OpenChat.
    """
    from openchat_core.templates.conversation import ConversationTemplate
    from openchat_core.templates.model_types import get_model_type
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
    resolved_condition = condition or get_model_type(mtype).inference_condition
    template = ConversationTemplate.from_tokenizer(mtype, load_tokenizer(model_path))
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
        notes=_notes(data, results, truncated, max_new_tokens))

    out.mkdir(parents=True, exist_ok=True)
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
