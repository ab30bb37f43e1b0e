"""Input formats: golden conversions, auto-detection, every error code, Arrow inputs, and no record lost."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openchat_core.data.formats import FormatDetectionError, record_checker
from openchat_core.data.rules import Rejection, ValidRecord
from openchat_core.data.sources import InputFileError
from openchat_core.data.validate import InputSource, validate_files

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "formats"
FORMATS = ["openchat", "messages", "sharegpt", "alpaca"]


def _rows(out: Path) -> list[dict]:
    return pq.read_table(out / "conversations.parquet").to_pylist()


def _golden(fmt: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{fmt}.expected.jsonl").read_text(encoding="utf-8").splitlines()]


def _records(fmt: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{fmt}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("chosen", ["auto", "explicit"])
def test_golden_conversion(fmt, chosen, tmp_path, monkeypatch):
    monkeypatch.chdir(FIXTURES)  # the golden files name their source relative to this folder
    report = validate_files([f"{fmt}.jsonl"], tmp_path, format=fmt if chosen == "explicit" else "auto", condition="GPT4")
    assert _rows(tmp_path) == _golden(fmt)
    assert report.rejected == 0 and report.sources[f"{fmt}.jsonl"].format == fmt
    assert report.sources[f"{fmt}.jsonl"].detected == (chosen == "auto")


def _strip_location(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("source", "line")} for row in rows]


@pytest.mark.parametrize("kind", ["json", "parquet", "datasets"])
@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "alpaca"])
def test_json_parquet_and_datasets_inputs_convert_like_jsonl(kind, fmt, tmp_path):
    records, golden = _records(fmt), _golden(fmt)
    if kind != "json" and fmt == "messages":  # Arrow columns have one type: no string and list contents side by side
        keep = [i for i, r in enumerate(records) if all(isinstance(m["content"], str) for m in r["messages"])]
        records, golden = [records[i] for i in keep], [golden[i] for i in keep]
    table = pa.Table.from_struct_array(pa.array(records)) if kind != "json" else None  # columns: the union of the records' keys
    if kind == "json":
        path = tmp_path / f"{fmt}.json"
        path.write_text(json.dumps(records))
    elif kind == "parquet":
        path = tmp_path / f"{fmt}.parquet"
        pq.write_table(table, path, row_group_size=2)  # several row groups: read batch by batch
    else:
        from datasets import Dataset

        path = tmp_path / f"{fmt}-dataset"
        Dataset(table).save_to_disk(str(path))
    report = validate_files([path], tmp_path / "out", format="auto", condition="GPT4", batch_rows=2)
    assert report.sources[str(path)].format == fmt and report.sources[str(path)].detected
    rows = _rows(tmp_path / "out")
    assert _strip_location(rows) == _strip_location(golden)
    assert [r["line"] for r in rows] == list(range(1, len(records) + 1))  # record numbers, 1-based


def test_datasets_folder_with_splits_names_the_split_folders(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(_records("alpaca"))}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputFileError, match=r"several splits.*dd/train"):
        validate_files([tmp_path / "dd"], tmp_path / "out", format="auto")
    assert not (tmp_path / "out" / "conversations.parquet").exists()


def test_parquet_nulls_are_missing_fields(tmp_path):
    path = tmp_path / "sg.parquet"
    pq.write_table(pa.Table.from_pylist([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": None}]}]), path)
    validate_files([path], tmp_path / "out", format="sharegpt")
    entry = json.loads((tmp_path / "out" / "quarantine.jsonl").read_text())
    assert (entry["code"], entry["field"], entry["line"]) == ("missing_field", "conversations[1].value", 1)
    assert json.loads(entry["raw"]) == {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}]}


def test_auto_detection_picks_the_majority_and_fails_closed(tmp_path):
    mostly_alpaca = tmp_path / "a.jsonl"
    mostly_alpaca.write_text("not json\n" + "\n".join(json.dumps(r) for r in [{"messages": []}] + _records("alpaca") * 2) + "\n")
    report = validate_files([mostly_alpaca], tmp_path / "out", format="auto")
    assert report.sources[str(mostly_alpaca)].format == "alpaca"
    assert report.valid == 6 and report.by_code == {"invalid_json": 1, "missing_field": 1}

    unknown = tmp_path / "u.jsonl"
    unknown.write_text('{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(FormatDetectionError, match=r"u.jsonl: cannot tell the format.*--format"):
        validate_files([unknown], tmp_path / "out2", format="auto")
    parquet = tmp_path / "u.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}]), parquet)
    with pytest.raises(FormatDetectionError, match=r"columns \['prompt'\]"):
        validate_files([parquet], tmp_path / "out3", format="auto")


CASES = [
    ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}, {"from": "bing", "value": "x"}]}, "unsupported_role", "conversations[1].from"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}, {"from": "function", "value": "x"}]}, "unsupported_role", "conversations[1].from"),
    ("messages", {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]}, "unsupported_role", "messages[1].role"),
    ("sharegpt", {"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}, "missing_field", "conversations[0].value"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a"}, {"from": "system", "value": "s"}]},
     "misplaced_system", "conversations[2].from"),
    ("messages", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, {"role": "assistant", "content": "x"}]},
     "invalid_content_part", "messages[0].content[0]"),
    ("messages", {"messages": [{"role": "system", "content": "s"}]}, "empty_items", "messages"),
    ("messages", {"messages": [{"role": "user", "content": "hi"}]}, "no_assistant_message", "messages"),
    ("messages", {"messages": [{"role": "system", "content": 3}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "invalid_type", "messages[0].content"),
    ("messages", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": -1}]}, "invalid_weight",
     "messages[1].weight"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b\ud800"}]}, "lone_surrogate", "conversations[1].value"),
    ("sharegpt", {"conversations": "hi"}, "invalid_type", "conversations"),
    ("alpaca", {"instruction": "a"}, "missing_field", "output"),
    ("alpaca", {"instruction": "a", "input": 3, "output": "b"}, "invalid_type", "input"),
    ("alpaca", {"instruction": "a", "output": "b", "condition": 1}, "invalid_type", "condition"),
]


@pytest.mark.parametrize(("fmt", "record", "code", "field"), CASES)
def test_error_codes_name_the_original_field(fmt, record, code, field):
    result = record_checker(fmt)(record)
    assert isinstance(result, Rejection)
    assert (str(result.code), result.field) == (code, field)
    assert f"'{field}'" in result.message or result.field == field


def test_record_condition_wins_over_the_default():
    check = record_checker("alpaca", "GPT4")
    own, default = check({"instruction": "a", "output": "b", "condition": "GPT3"}), check({"instruction": "a", "output": "b"})
    assert isinstance(own, ValidRecord) and isinstance(default, ValidRecord)
    assert (own.condition, default.condition) == ("GPT3", "GPT4")


def test_a_file_mixing_good_and_bad_records_loses_nothing(tmp_path):
    lines = [json.dumps(r) for r in _records("sharegpt")] + [json.dumps(case[1]) for case in CASES if case[0] == "sharegpt"]
    lines[2:2] = ["", "   ", "{broken"]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    report = validate_files([InputSource(path, "sharegpt", "GPT4")], tmp_path / "out")
    quarantine = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    assert report.lines == len(lines) == report.valid + report.rejected + report.blank
    assert (report.valid, report.blank, report.rejected) == (3, 2, len(quarantine))
    assert sorted({e["line"] for e in quarantine} | {r["line"] for r in _rows(tmp_path / "out")} | {3, 4}) == list(range(1, len(lines) + 1))
    broken = next(e for e in quarantine if e["line"] == 5)
    assert broken["code"] == "invalid_json" and broken["message"].startswith(f"{path}:5")
    bing = next(e for e in quarantine if e["code"] == "unsupported_role")
    assert f"{path}:{bing['line']} [field conversations[1].from]" in bing["message"] and "'bing'" in bing["message"]


def test_cli_says_which_format_it_detected_and_fails_closed(tmp_path):
    from typer.testing import CliRunner

    from openchat_core.cli import build_app

    runner = CliRunner()
    result = runner.invoke(build_app(), ["validate", str(FIXTURES / "sharegpt.jsonl"), "--condition", "GPT4", "--out", str(tmp_path / "ok")])
    assert result.exit_code == 0 and f"{FIXTURES / 'sharegpt.jsonl'}: format sharegpt (detected)" in result.output
    assert "3 lines: 3 valid, 0 rejected, 0 blank" in result.output
    unknown = tmp_path / "u.jsonl"
    unknown.write_text('{"prompt": "a"}\n')
    result = runner.invoke(build_app(), ["validate", str(unknown), "--out", str(tmp_path / "bad")])
    assert result.exit_code == 1 and "cannot tell the format" in result.output


def test_a_datasets_folder_is_digested_by_its_files(tmp_path):
    """The validate stage's cache key covers a folder input's contents (a changed dataset is revalidated)."""
    from datasets import Dataset

    from openchat_core.digest import files_digest

    Dataset.from_list(_records("alpaca")).save_to_disk(str(tmp_path / "d"))
    before = files_digest([tmp_path / "d"])
    assert files_digest([tmp_path / "d"]) == before
    Dataset.from_list(_records("alpaca")[:2]).save_to_disk(str(tmp_path / "d2"))
    (tmp_path / "d").rename(tmp_path / "old")
    (tmp_path / "d2").rename(tmp_path / "d")
    assert files_digest([tmp_path / "d"]) != before


def test_gzip_and_json_named_jsonl_inputs(tmp_path):
    import gzip

    lines = (FIXTURES / "alpaca.jsonl").read_bytes()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "b.json").write_bytes(lines)  # JSON Lines under a .json name: read line by line
    report = validate_files([tmp_path / "a.jsonl.gz", tmp_path / "b.json"], tmp_path / "out", format="auto", condition="GPT4")
    assert [c.format for c in report.sources.values()] == ["alpaca", "alpaca"] and report.valid == 6
    assert _strip_location(_rows(tmp_path / "out")) == _strip_location(_golden("alpaca")) * 2


def test_a_broken_json_array_fails_closed(tmp_path):
    (tmp_path / "a.json").write_text('[{"instruction": "a", "output": "b"},')
    with pytest.raises(InputFileError, match=r"a.json: not a valid JSON array"):
        validate_files([tmp_path / "a.json"], tmp_path / "out", format="alpaca")
    assert not (tmp_path / "out" / "quarantine.jsonl.partial").exists()


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from openchat_core.data.rules import check_record  # noqa: E402

_CONTENT = st.one_of(st.text(max_size=6), st.sampled_from(["\ud800", ""]), st.integers(), st.none())
_ITEMS = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": _CONTENT},
                                        optional={"weight": st.one_of(st.none(), st.floats(allow_nan=True), st.just(-1), st.just(0.5))}),
                  max_size=4)
_SYSTEM = st.one_of(st.none(), st.text(max_size=4), st.integers())


def _as_messages(items: list[dict], system) -> dict:
    head = [] if system is None else [{"role": "system", "content": system}]
    return {"messages": head + [dict(m) for m in items]}


def _as_sharegpt(items: list[dict], system) -> dict:
    names = {"user": "human", "assistant": "gpt"}
    head = [] if system is None else [{"from": "system", "value": system}]
    return {"conversations": head + [{"from": names[m["role"]], "value": m["content"]} for m in items]}


@settings(max_examples=300, deadline=None)
@given(_ITEMS, _SYSTEM)
def test_other_formats_accept_and_reject_exactly_what_the_openchat_rules_do(items, system):
    """The converters only map fields: the same conversation in another format gets the same verdict, record and code."""
    unweighted = [{k: v for k, v in m.items() if k != "weight"} for m in items]
    system_key = {} if system is None else {"system": system}
    cases = [("messages", _as_messages(items, system), check_record({"items": items, **system_key})),
             ("sharegpt", _as_sharegpt(unweighted, system), check_record({"items": unweighted, **system_key}))]
    for fmt, record, expected in cases:
        got = record_checker(fmt)(record)
        assert type(got) is type(expected), (fmt, record, got, expected)
        if isinstance(expected, ValidRecord):
            assert (got.items, got.system, got.condition) == (expected.items, expected.system, expected.condition)
        else:
            assert got.code == expected.code, (fmt, record, got, expected)
