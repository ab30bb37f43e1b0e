"""Eval-data discovery, selection, row checks (file:line:field, rest kept) and the content digest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from openchat_core.evaluation.eval_data import (
    EvalDataError,
    EvalSetNotFoundError,
    discover_tasks,
    load_eval_data,
    select_tasks,
)
from openchat_core.evaluation.task_types import UnknownTaskTypeError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "eval_data"


def write_rows(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_discovers_openchat_layout_in_sorted_order():
    tasks = discover_tasks(FIXTURES)
    names = [t.task_name for t in tasks]
    assert names == sorted(names)
    by_name = {t.task_name: t for t in tasks}
    aqua = by_name["zs/agieval/aqua-rat.zero-shot"]  # dots in the file name stay in the task name
    assert aqua.task_type == "zs/agieval"
    assert by_name["fs_cothub/gsm8k/gsm8k"].task_type == "fs_cothub/gsm8k"
    assert by_name["demo/exact/basics"].task_type == "demo/exact"


def test_select_by_prefix_whole_components():
    tasks = discover_tasks(FIXTURES)
    selected = [t.task_name for t in select_tasks(tasks, ["zs/agieval", "fs_cothub/gsm8k", "demo"])]
    assert selected == ["demo/exact/basics", "fs_cothub/gsm8k/gsm8k", "zs/agieval/aqua-rat.zero-shot"]
    assert len(select_tasks(tasks, [])) == len(tasks)
    assert [t.task_name for t in select_tasks(tasks, ["zs/bbh_mc_orca/geometric_shapes"])] == [
        "zs/bbh_mc_orca/geometric_shapes"]
    with pytest.raises(EvalSetNotFoundError, match="'zs/agi'.*zs/agieval"):
        select_tasks(tasks, ["zs/agi"])


def test_loads_all_fixture_rows_without_issues():
    data = load_eval_data(FIXTURES, strict=True)
    assert len(data.questions) == 20
    assert not data.issues
    first = data.questions[0]
    assert (first.task_name, first.line, first.label) == ("demo/exact/basics", 1, "Paris")


def test_unknown_task_type_is_an_error_only_when_selected(tmp_path):
    shutil.copytree(FIXTURES / "demo", tmp_path / "demo")
    write_rows(tmp_path / "coding/mbpp/mbpp.jsonl", ['{"question": "def f():", "label": "x"}'])
    assert len(load_eval_data(tmp_path, ["demo"]).questions) == 3
    with pytest.raises(UnknownTaskTypeError, match="coding/mbpp.*Known task types: .*demo/exact"):
        load_eval_data(tmp_path)


def test_bad_rows_are_reported_with_file_line_field_and_the_rest_kept(tmp_path):
    path = write_rows(tmp_path / "demo/exact/mixed.jsonl", [
        '{"question": "ok 1", "label": "a"}',
        '{"question": "broken", "label": ',
        '[1, 2]',
        '{"label": "b"}',
        '{"question": "no label"}',
        '{"question": 7, "label": "c"}',
        '{"question": "label ints", "label": [1]}',
        '{"question": "label empty", "label": []}',
        '',
        '{"question": "ok 2", "label": ["d", "e"]}',
    ])
    data = load_eval_data(tmp_path)
    assert [q.question for q in data.questions] == ["ok 1", "ok 2"]
    assert [q.line for q in data.questions] == [1, 10]
    found = [(i.line, i.field) for i in data.issues]
    assert found == [(2, None), (3, None), (4, "question"), (5, "label"), (6, "question"), (7, "label"), (8, "label")]
    messages = [str(i) for i in data.issues]
    assert messages[0].startswith(f"{path}:2: invalid JSON")
    assert messages[2] == f"{path}:4: question: missing; every eval row needs the prompt text as a string"
    assert "must be a string, got int" in messages[4]
    with pytest.raises(EvalDataError, match="7 eval-data issue"):
        data.raise_for_issues()
    with pytest.raises(EvalDataError, match=r"mixed.jsonl:2: invalid JSON"):
        load_eval_data(tmp_path, strict=True)


def test_task_type_specific_fields_are_checked(tmp_path):
    write_rows(tmp_path / "zs/bbh_mc_orca/t.jsonl", [
        '{"question": "q", "label": ["A"], "options": ["A", "B"]}',
        '{"question": "q", "label": ["A"], "options": "AB"}',
        '{"question": "q", "label": ["A"]}',
    ])
    write_rows(tmp_path / "fs_cothub/bbh/free.jsonl", ['{"question": "q", "label": ["x"], "options": null}'])
    write_rows(tmp_path / "fs_cothub/math/MATH.jsonl", [
        json.dumps({"question": "q", "label": [True], "_metadata": {"solution": "so $\\boxed{3}$"}}),
        json.dumps({"question": "q", "label": [True], "_metadata": {"solution": "no box"}}),
        json.dumps({"question": "q", "label": [True]}),
    ])
    data = load_eval_data(tmp_path)
    assert len(data.questions) == 3
    assert [(Path(i.path).name, i.line, i.field) for i in data.issues] == [
        ("MATH.jsonl", 2, "_metadata.solution"), ("MATH.jsonl", 3, "_metadata.solution"),
        ("t.jsonl", 2, "options"), ("t.jsonl", 3, "options")]


def test_unreadable_file_is_one_issue_and_other_files_load(tmp_path):
    shutil.copytree(FIXTURES / "demo", tmp_path / "demo")
    (tmp_path / "demo/exact/latin1.jsonl").write_bytes('{"question": "caf\xe9", "label": "x"}\n'.encode("latin-1"))
    data = load_eval_data(tmp_path)
    assert len(data.questions) == 3
    assert len(data.issues) == 1 and data.issues[0].line is None and "utf-8" in data.issues[0].message


def test_nothing_valid_is_an_error(tmp_path):
    write_rows(tmp_path / "demo/exact/bad.jsonl", ["{", "{"])
    with pytest.raises(EvalDataError, match="no valid questions.*bad.jsonl:1"):
        load_eval_data(tmp_path)


def test_unicode_line_separator_inside_a_string_does_not_split_the_row(tmp_path):
    write_rows(tmp_path / "demo/exact/u.jsonl", [json.dumps({"question": "a\u2028b", "label": "x"}, ensure_ascii=False)])
    data = load_eval_data(tmp_path, strict=True)
    assert data.questions[0].question == "a\u2028b"


def test_limit_per_task_keeps_first_valid_rows():
    data = load_eval_data(FIXTURES, ["fs_cothub/gsm8k", "demo"], limit_per_task=2)
    assert [(q.task_name, q.line) for q in data.questions] == [
        ("demo/exact/basics", 1), ("demo/exact/basics", 2), ("fs_cothub/gsm8k/gsm8k", 1), ("fs_cothub/gsm8k/gsm8k", 2)]
    with pytest.raises(ValueError, match="limit_per_task"):
        load_eval_data(FIXTURES, limit_per_task=0)


def test_digest_tracks_selected_content_and_limit(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "data")
    root = tmp_path / "data"
    base = load_eval_data(root, ["demo", "zs/agieval"]).digest
    assert len(base) == 16
    assert load_eval_data(root, ["zs/agieval", "demo/"]).digest == base  # order and trailing slash do not matter
    assert load_eval_data(root, ["demo"]).digest != base
    assert load_eval_data(root, ["demo", "zs/agieval"], limit_per_task=1).digest != base
    # a file outside the selection does not change it; one inside does
    gsm = root / "fs_cothub/gsm8k/gsm8k.jsonl"
    gsm.write_text(gsm.read_text() + "\n")
    assert load_eval_data(root, ["demo", "zs/agieval"]).digest == base
    demo = root / "demo/exact/basics.jsonl"
    demo.write_text(demo.read_text().replace("Paris", "Lyon"))
    assert load_eval_data(root, ["demo", "zs/agieval"]).digest != base


def test_missing_root_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="<task_type>/<task>.jsonl"):
        load_eval_data(tmp_path / "nope")
