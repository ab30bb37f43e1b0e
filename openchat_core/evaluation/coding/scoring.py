"""Execution scoring of coding answers: extracted programs -> sandboxed tests -> per-problem verdicts, pass@1.

Greedy decoding gives one sample per problem, so pass@1 is the fraction of problems whose
solution passes: on the base tests (HumanEval) and on base + extra tests (HumanEval+), as
EvalPlus reports them. Problems run in parallel sandboxes (`workers`), each in its own process.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_core.atomic import write_text_atomic
from openchat_core.evaluation.coding.problems import (evalplus_problem, file_digest, has_plus_tests, load_humaneval_plus,
                                                      resolve_problem, sandbox_job)
from openchat_core.evaluation.coding.sandbox import SandboxLimits, SandboxOutcome, run_job

SAMPLES_DIR = "evalplus"


@dataclass(frozen=True)
class CodingOptions:
    """How coding answers are executed. `humaneval_plus`: a local HumanEvalPlus file replacing the rows' problems."""

    humaneval_plus: Path | None = None
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    workers: int = 2

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"coding workers must be >= 1, got {self.workers}")

    def describe(self) -> dict[str, Any]:
        return {"humaneval_plus": str(self.humaneval_plus) if self.humaneval_plus else None,
                "humaneval_plus_digest": file_digest(self.humaneval_plus), "workers": self.workers,
                "limits": {"timeout_s": self.limits.timeout_s, "memory_mb": self.limits.memory_mb,
                           "max_processes": self.limits.max_processes, "file_mb": self.limits.file_mb,
                           "per_test_s": self.limits.per_test_s}}


def coding_options(humaneval_plus: Path | str | None, timeout_s: float, memory_mb: int, workers: int) -> CodingOptions:
    """CodingOptions from the flat settings (`eval.humaneval_plus`, `eval.code_*`; `openchat eval --code-*`)."""
    return CodingOptions(humaneval_plus=Path(humaneval_plus) if humaneval_plus else None, workers=workers,
                         limits=SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb))


class EvalPlusMissingError(ValueError):
    """The `evalplus` package, which the sandbox worker runs the tests with, is not installed."""


def resolve_problems(metas: Sequence[Mapping[str, Any]], options: CodingOptions) -> list[dict[str, Any]]:
    """Each row's problem, replaced by the HumanEvalPlus file's when one is configured (read once).

    Also checks that evalplus is importable, so a missing package stops the run before generation.
    """
    if importlib.util.find_spec("evalplus") is None:
        raise EvalPlusMissingError("coding eval needs the evalplus package: pip install --no-deps evalplus==0.3.1 "
                                   "appdirs==1.4.4 tempdir==0.7.1 wget==3.2 (requirements/offline-assets.txt, pipeline.txt)")
    overrides = load_humaneval_plus(options.humaneval_plus) if options.humaneval_plus else None
    return [resolve_problem(meta, overrides) for meta in metas]


def execute_solutions(problems: Sequence[Mapping[str, Any]], solutions: Sequence[str],
                      options: CodingOptions) -> list[SandboxOutcome]:
    """Run every solution against its problem's tests, each in its own sandbox; outcomes in input order."""
    jobs = [sandbox_job(p, s) for p, s in zip(problems, solutions, strict=True)]
    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        return list(pool.map(lambda job: run_job(job, options.limits), jobs))


def pass_rates(outcomes: Sequence[SandboxOutcome]) -> dict[str, Any]:
    """pass@1 on base and plus tests (plus None when no problem had HumanEval+ tests), and verdict counts."""
    n = len(outcomes)
    base = sum(o.base == "pass" for o in outcomes)
    with_plus = [o for o in outcomes if o.plus is not None]
    plus = sum(o.plus == "pass" for o in with_plus)
    return {"n": n, "pass_base": base, "pass1_base": base / n if n else 0.0,
            "n_plus": len(with_plus), "pass_plus": plus if with_plus else None,
            "pass1_plus": plus / len(with_plus) if with_plus else None,
            "verdicts": dict(sorted(Counter(o.base for o in outcomes).items()))}


def write_evalplus_samples(out_dir: Path, task_name: str, problems: Sequence[Mapping[str, Any]],
                           solutions: Sequence[str]) -> Path:
    """EvalPlus's `samples.jsonl` (task_id + complete `solution`) and, beside it, the problems scored.

    `problems.jsonl` is in HumanEvalPlus's format, so EvalPlus's own tools can re-score offline:
    `HUMANEVAL_OVERRIDE_PATH=<dir>/problems.jsonl evalplus.evaluate --dataset humaneval --samples <dir>/samples.jsonl`.
    """
    folder = out_dir / SAMPLES_DIR / task_name
    folder.mkdir(parents=True, exist_ok=True)
    samples = "".join(json.dumps({"task_id": p["task_id"], "solution": s}) + "\n" for p, s in zip(problems, solutions, strict=True))
    write_text_atomic(folder / "samples.jsonl", samples)
    plus = [evalplus_problem(p) for p in problems if has_plus_tests(p)]
    if len(plus) == len(problems):
        write_text_atomic(folder / "problems.jsonl", "".join(json.dumps(p) + "\n" for p in plus))
    else:
        (folder / "problems.jsonl").unlink(missing_ok=True)
    return folder / "samples.jsonl"
