"""HumanEval / HumanEval+ problems: from the eval rows themselves, or from a local HumanEvalPlus file.

OpenChat's `coding/humaneval/humaneval.jsonl` rows carry the whole HumanEval+ problem in
`_metadata` (task_id, prompt, entry_point, canonical_solution, contract, base_input, plus_input,
atol, and HumanEval's own `test`), so scoring needs no download. `--humaneval-plus PATH`
(`eval.humaneval_plus`) replaces those problems by task_id with the ones of a local
HumanEvalPlus `.jsonl`/`.jsonl.gz` (e.g. the official v0.1.10 release that evalplus would
download). A row without HumanEval+ inputs and no such file is scored on HumanEval's `check()`
only, and its plus result is reported as not run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PLUS_FIELDS = ("canonical_solution", "base_input", "plus_input", "atol")
REQUIRED_FIELDS = ("task_id", "prompt", "entry_point")
OPTION_HINT = "--humaneval-plus PATH (config: eval.humaneval_plus)"


class HumanEvalPlusError(ValueError):
    """The local HumanEvalPlus file is missing or malformed."""


def has_plus_tests(problem: Mapping[str, Any]) -> bool:
    return all(k in problem for k in PLUS_FIELDS)


def row_problem_error(meta: Any) -> tuple[str, str] | None:
    """(field, message) when a row's `_metadata` cannot be scored; None when it can."""
    if not isinstance(meta, Mapping):
        return "_metadata", "must be an object with the HumanEval problem (task_id, prompt, entry_point, tests)"
    for key in REQUIRED_FIELDS:
        if not isinstance(meta.get(key), str) or not meta[key]:
            return f"_metadata.{key}", "missing or not a non-empty string"
    if has_plus_tests(meta):
        if not isinstance(meta["base_input"], list) or not isinstance(meta["plus_input"], list):
            return "_metadata.base_input", "base_input and plus_input must be lists of argument lists"
        return None
    if not isinstance(meta.get("test"), str):
        return "_metadata.test", ("no tests: give HumanEval's `test` (check function) or the HumanEval+ fields "
                                  f"{', '.join(PLUS_FIELDS)}; or score with {OPTION_HINT}")
    return None


def load_humaneval_plus(path: Path | str) -> dict[str, dict[str, Any]]:
    """A HumanEvalPlus file (`.jsonl` or `.jsonl.gz`) as task_id -> problem, checked as evalplus checks it."""
    file = Path(path)
    if not file.is_file():
        raise HumanEvalPlusError(f"{OPTION_HINT}: {file} is not a file. Give a local HumanEvalPlus .jsonl or .jsonl.gz "
                                 f"(this pipeline never downloads it)")
    opener = gzip.open if file.name.endswith(".gz") else open
    problems: dict[str, dict[str, Any]] = {}
    try:
        with opener(file, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                problem = json.loads(line)
                missing = [k for k in (*REQUIRED_FIELDS, *PLUS_FIELDS) if k not in problem]
                if missing:
                    raise HumanEvalPlusError(f"{file}:{number}: missing {', '.join(missing)}; not a HumanEvalPlus file "
                                             f"({OPTION_HINT})")
                problems[problem["task_id"]] = problem
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HumanEvalPlusError(f"{file}: unreadable as HumanEvalPlus JSON lines ({OPTION_HINT}): {exc}") from None
    if not problems:
        raise HumanEvalPlusError(f"{file}: no problems in it ({OPTION_HINT})")
    return problems


def file_digest(path: Path | str | None) -> str | None:
    if path is None:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def resolve_problem(meta: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """The problem a row is scored on: the override file's, when it has this task_id, else the row's own."""
    problem = dict(meta)
    if overrides and meta["task_id"] in overrides:
        problem.update(overrides[meta["task_id"]])
    return problem


def sandbox_job(problem: Mapping[str, Any], solution: str) -> dict[str, Any]:
    """What `sandbox_worker.py` needs: the program, and HumanEval+ inputs (or HumanEval's `test`)."""
    job: dict[str, Any] = {"code": solution, "entry_point": problem["entry_point"], "task_id": problem["task_id"]}
    if has_plus_tests(problem):
        job.update(canonical=problem["prompt"] + problem["canonical_solution"], base_input=problem["base_input"],
                   plus_input=problem["plus_input"], atol=problem["atol"])
    else:
        job.update(test=problem["test"], plus_input=None)
    return job


def evalplus_problem(problem: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a HumanEvalPlus file line (what `evalplus.data.get_human_eval_plus` returns per task)."""
    keys = ("task_id", "prompt", "entry_point", "canonical_solution", "contract", "base_input", "plus_input", "atol")
    return {k: problem[k] for k in keys if k in problem}
