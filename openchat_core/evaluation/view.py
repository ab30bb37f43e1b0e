"""Compare eval results across runs/models: rows for tables, and a markdown rendering.

Like OpenChat's `view_results.py` (accuracy and unmatched rate per task type for each model, then
per task within each type), but from our `summary.json` files, without pandas or Excel. The row
functions return plain records, so a CLI can print them and a Prefect task can publish them as a
table artifact; `render_markdown` is the printable form (a markdown artifact or a terminal).

Runs are only comparable on the same eval data (digest) with the same condition and system
prompt; the rendering says so when they are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openchat_core.evaluation.summary import EvalSummary, Score

SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class RunSummary:
    label: str
    path: Path
    summary: EvalSummary


@dataclass(frozen=True)
class ViewRow:
    """One cell group: a run's score on a task type (`task` None) or on one task of it."""

    run: str
    task_type: str
    task: str | None
    n: int
    accuracy: float
    unmatched_rate: float


def _summary_dirs(path: Path) -> list[Path]:
    if (path / SUMMARY_FILE).is_file():
        return [path]
    found = sorted(p.parent for p in path.glob(f"*/{SUMMARY_FILE}"))
    if not found:
        raise FileNotFoundError(f"{path}: no {SUMMARY_FILE} in it or in its sub-folders; pass eval result folders "
                                f"(written by run_generation_eval)")
    return found


def load_runs(paths: Sequence[Path | str], labels: Sequence[str] | None = None) -> list[RunSummary]:
    """Result folders (or folders of result folders) -> runs; labels default to folder names, made unique."""
    dirs = [d for p in paths for d in _summary_dirs(Path(p))]
    if labels is not None and len(labels) != len(dirs):
        raise ValueError(f"{len(labels)} labels for {len(dirs)} result folders: {', '.join(map(str, dirs))}")
    names = list(labels) if labels is not None else [d.name for d in dirs]
    if labels is None and len(set(names)) != len(names):
        names = [f"{d.parent.name}/{d.name}" for d in dirs]
    runs = []
    for name, d in zip(names, dirs, strict=True):
        summary = EvalSummary.model_validate_json((d / SUMMARY_FILE).read_text())
        runs.append(RunSummary(label=name, path=d, summary=summary))
    return runs


def _row(run: str, task_type: str, task: str | None, s: Score) -> ViewRow:
    return ViewRow(run=run, task_type=task_type, task=task, n=s.n, accuracy=s.accuracy, unmatched_rate=s.unmatched_rate)


def task_type_rows(runs: Sequence[RunSummary]) -> list[ViewRow]:
    """Per run and task type: accuracy over the type's questions (OpenChat's overall table)."""
    return [_row(r.label, t, None, s) for r in runs for t, s in r.summary.task_types.items()]


def task_rows(runs: Sequence[RunSummary], task_type: str | None = None) -> list[ViewRow]:
    """Per run and task (named relative to its type, as OpenChat), optionally for one task type."""
    rows = []
    for r in runs:
        types = {name: name.rpartition("/")[0] for name in r.summary.tasks}
        for name, s in r.summary.tasks.items():
            if task_type is None or types[name] == task_type:
                rows.append(_row(r.label, types[name], name[len(types[name]) + 1:], s))
    return rows


def comparability_notes(runs: Sequence[RunSummary]) -> list[str]:
    """Warnings when runs were evaluated on different data, condition or system prompt."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for r in runs:
        key = (r.summary.eval_data_digest, r.summary.condition, r.summary.system)
        groups.setdefault(key, []).append(r.label)
    if len(groups) <= 1:
        return []
    parts = [f"{', '.join(labels)} (data {d}, condition {c!r}{', system prompt set' if s else ''})"
             for (d, c, s), labels in groups.items()]
    return ["Not comparable: these runs differ in eval data, condition or system prompt: " + "; ".join(parts)]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}"


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _pivot(rows: Sequence[ViewRow], index: str, columns: str) -> tuple[list[str], list[str], dict[tuple[str, str], ViewRow]]:
    cells = {(getattr(r, index), getattr(r, columns)): r for r in rows}
    index_values = list(dict.fromkeys(getattr(r, index) for r in rows))
    column_values = sorted(dict.fromkeys(getattr(r, columns) for r in rows))
    return index_values, column_values, cells


def _cell(row: ViewRow | None) -> str:
    return "-" if row is None else f"{_pct(row.accuracy)} ({_pct(row.unmatched_rate)})"


@dataclass(frozen=True)
class CodingRow:
    """A run's pass@1 on one coding task: base (HumanEval) and base + plus tests (HumanEval+; None when not run)."""

    run: str
    task: str
    n: int
    pass1_base: float
    pass1_plus: float | None


def coding_rows(runs: Sequence[RunSummary]) -> list[CodingRow]:
    return [CodingRow(r.label, task, s.n, s.pass1_base, s.pass1_plus if s.n_plus == s.n else None)
            for r in runs for task, s in r.summary.coding.items()]


def _coding_table(runs: Sequence[RunSummary]) -> list[str]:
    rows = coding_rows(runs)
    if not rows:
        return []
    body = [[r.run, r.task, str(r.n), _pct(r.pass1_base), _pct(r.pass1_plus)] for r in rows]
    return ["", "## Coding (pass@1 %)", "", _markdown_table(["run", "task", "problems", "HumanEval (base)", "HumanEval+ (plus)"], body)]


def render_markdown(runs: Sequence[RunSummary]) -> str:
    """Overall table (runs x task types), then one table per task type (tasks x runs); cells: accuracy % (unmatched %).

    Coding task types appear there too (accuracy = pass@1 on base tests; unmatched = no function
    found), and once more in a pass@1 table with HumanEval and HumanEval+ side by side.
    """
    out = ["Cells: accuracy % (unmatched %).", ""]
    out += [f"> {note}\n" for note in comparability_notes(runs)]
    labels, types, cells = _pivot(task_type_rows(runs), "run", "task_type")
    body = [[label] + [_cell(cells.get((label, t))) for t in types] for label in labels]
    out += ["## Task types", "", _markdown_table(["run", *types], body)]
    out += _coding_table(runs)
    for task_type in types:
        tasks, run_labels, task_cells = _pivot(task_rows(runs, task_type), "task", "run")
        run_labels = [r.label for r in runs if r.label in run_labels]  # keep the order runs were given in
        body = [[task] + [_cell(task_cells.get((task, label))) for label in run_labels] for task in sorted(tasks)]
        out += ["", f"### {task_type}", "", _markdown_table(["task", *run_labels], body)]
    return "\n".join(out) + "\n"
