"""Every validation rule of DESIGN.md, one test each, plus the accounting invariant and streaming limits."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from openchat_core.data.rules import ErrorCode
from openchat_core.data.validate import RejectedFractionExceeded, validate_files

GOOD = {"items": [{"role": "user", "content": "hi", "weight": 0}, {"role": "assistant", "content": "hello", "weight": 1.0}],
        "condition": "GPT4", "system": "be nice"}


def _line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _run(tmp_path: Path, lines: list[bytes], name: str = "in.jsonl", **kwargs):
    src = tmp_path / name
    src.write_bytes(b"\n".join(lines) + b"\n")
    report = validate_files([src], tmp_path / "out", **kwargs)
    quarantine = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    rows = pq.read_table(tmp_path / "out" / "conversations.parquet").to_pylist()
    return report, quarantine, rows


def _single_rejection(tmp_path: Path, raw: bytes) -> dict:
    report, quarantine, rows = _run(tmp_path, [_line(GOOD), raw])
    assert report.valid == 1 and report.rejected == 1 and not [r for r in rows if r["line"] == 2]
    (entry,) = quarantine
    assert entry["line"] == 2 and entry["source"].endswith("in.jsonl")
    assert f"in.jsonl:2" in entry["message"]
    return entry


def test_valid_line_becomes_typed_row(tmp_path):
    report, quarantine, rows = _run(tmp_path, [_line(GOOD)])
    assert (report.lines, report.valid, report.rejected, report.blank) == (1, 1, 0, 0) and quarantine == []
    (row,) = rows
    assert row["line"] == 1 and row["condition"] == "GPT4" and row["system"] == "be nice"
    assert row["items"] == [{"role": "user", "content": "hi", "weight": 0.0}, {"role": "assistant", "content": "hello", "weight": 1.0}]


def test_missing_condition_system_and_weight_default(tmp_path):
    _, _, rows = _run(tmp_path, [_line({"items": [{"role": "assistant", "content": "x"}]})])
    assert rows[0]["condition"] == "" and rows[0]["system"] == "" and rows[0]["items"][0]["weight"] is None


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        (b"[1, 2]", ErrorCode.NOT_AN_OBJECT, None),
        (b'"just a string"', ErrorCode.NOT_AN_OBJECT, None),
        (b"{not json", ErrorCode.INVALID_JSON, None),
        (b'{"condition": "GPT4"}', ErrorCode.MISSING_FIELD, "items"),
        (b'{"items": {"role": "user"}}', ErrorCode.INVALID_TYPE, "items"),
        (b'{"items": []}', ErrorCode.EMPTY_ITEMS, "items"),
        (b'{"items": ["hello"]}', ErrorCode.INVALID_TYPE, "items[0]"),
        (b'{"items": [{"content": "x"}]}', ErrorCode.MISSING_FIELD, "items[0].role"),
        (b'{"items": [{"role": "assistant"}]}', ErrorCode.MISSING_FIELD, "items[0].content"),
        (b'{"items": [{"role": "bot", "content": "x"}]}', ErrorCode.INVALID_ROLE, "items[0].role"),
        (b'{"items": [{"role": "Assistant", "content": "x"}]}', ErrorCode.INVALID_ROLE, "items[0].role"),
        (b'{"items": [{"role": 1, "content": "x"}]}', ErrorCode.INVALID_TYPE, "items[0].role"),
        (b'{"items": [{"role": "assistant", "content": 5}]}', ErrorCode.INVALID_TYPE, "items[0].content"),
        (b'{"items": [{"role": "assistant", "content": null}]}', ErrorCode.INVALID_TYPE, "items[0].content"),
        (b'{"items": [{"role": "assistant", "content": "x", "weight": true}]}', ErrorCode.INVALID_TYPE, "items[0].weight"),
        (b'{"items": [{"role": "assistant", "content": "x", "weight": "1.0"}]}', ErrorCode.INVALID_TYPE, "items[0].weight"),
        (b'{"items": [{"role": "assistant", "content": "x", "weight": -0.5}]}', ErrorCode.INVALID_WEIGHT, "items[0].weight"),
        (b'{"items": [{"role": "assistant", "content": "x", "weight": NaN}]}', ErrorCode.NON_FINITE_NUMBER, "items[0].weight"),
        (b'{"items": [{"role": "assistant", "content": "x", "weight": Infinity}]}', ErrorCode.NON_FINITE_NUMBER, "items[0].weight"),
        (b'{"items": [{"role": "assistant", "content": "x", "weight": -Infinity}]}', ErrorCode.NON_FINITE_NUMBER, "items[0].weight"),
        (b'{"items": [{"role": "assistant", "content": "x", "weight": 1e400}]}', ErrorCode.NON_FINITE_NUMBER, "items[0].weight"),
        (b'{"items": [{"role": "assistant", "content": "bad \\ud800 surrogate"}]}', ErrorCode.LONE_SURROGATE, "items[0].content"),
        (b'{"items": [{"role": "assistant", "content": "x"}], "system": "\\udfff"}', ErrorCode.LONE_SURROGATE, "system"),
        (b'{"items": [{"role": "assistant", "content": "x"}], "condition": 3}', ErrorCode.INVALID_TYPE, "condition"),
        (b'{"items": [{"role": "assistant", "content": "x"}], "system": ["a"]}', ErrorCode.INVALID_TYPE, "system"),
        (b'{"items": [{"role": "user", "content": "x"}]}', ErrorCode.NO_ASSISTANT_MESSAGE, "items"),
        (b'{"items": [{"role": "assistant", "content": "caf\xe9"}]}', ErrorCode.INVALID_UTF8, None),
    ],
)
def test_each_rule_rejects_with_stable_code_and_field(tmp_path, raw, code, field):
    entry = _single_rejection(tmp_path, raw)
    assert entry["code"] == code.value
    assert entry["field"] == field
    if field:
        assert field in entry["message"]


def test_invalid_utf8_keeps_exact_bytes(tmp_path):
    raw = b'{"items": [{"role": "assistant", "content": "\xff\xfe"}]}'
    entry = _single_rejection(tmp_path, raw)
    import base64

    assert base64.b64decode(entry["raw_base64"]) == raw
    assert "byte offset" in entry["message"]


def test_quarantine_keeps_raw_line(tmp_path):
    raw = b'{"items": [{"role": "bot", "content": "x"}]}'
    assert _single_rejection(tmp_path, raw)["raw"] == raw.decode()


def test_zero_and_integer_weights_are_valid(tmp_path):
    _, _, rows = _run(tmp_path, [b'{"items": [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a", "weight": 2}]}'])
    assert [m["weight"] for m in rows[0]["items"]] == [0.0, 2.0]


def test_unknown_keys_are_ignored_and_counted(tmp_path):
    obj = {"items": [{"role": "assistant", "content": "a", "extra": 1}], "id": 7, "meta": {}}
    report, _, rows = _run(tmp_path, [_line(obj), _line(obj)])
    assert report.valid == 2 and len(rows) == 2
    assert report.unknown_keys == {"id": 2, "meta": 2, "items[0].extra": 2}


def test_blank_lines_counted_not_rejected(tmp_path):
    report, quarantine, _ = _run(tmp_path, [b"", _line(GOOD), b"   ", b"\t", _line(GOOD)])
    assert (report.lines, report.valid, report.rejected, report.blank) == (5, 2, 0, 3)  # the final newline ends line 5
    assert quarantine == []


def test_bom_and_crlf(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + _line(GOOD) + b"\r\n" + _line(GOOD) + b"\r\n")
    report = validate_files([src], tmp_path / "out")
    assert report.valid == 2 and report.rejected == 0
    rows = pq.read_table(tmp_path / "out" / "conversations.parquet").to_pylist()
    assert rows[1]["items"][1]["content"] == "hello"  # no stray \r


def test_gzip_input(tmp_path):
    src = tmp_path / "in.jsonl.gz"
    with gzip.open(src, "wb") as f:
        f.write(_line(GOOD) + b"\n{bad\n")
    report = validate_files([src], tmp_path / "out")
    assert (report.valid, report.rejected) == (1, 1)


def test_multi_megabyte_line_is_accepted(tmp_path):
    big = "x" * (5 * 1024 * 1024)
    obj = {"items": [{"role": "user", "content": "q"}, {"role": "assistant", "content": big}]}
    _, _, rows = _run(tmp_path, [_line(obj)])
    assert len(rows[0]["items"][1]["content"]) == len(big)


def test_over_limit_line_is_rejected_without_loading_it(tmp_path):
    obj = {"items": [{"role": "assistant", "content": "y" * 5000}]}
    report, quarantine, rows = _run(tmp_path, [_line(obj), _line(GOOD)], max_line_bytes=1000)
    assert report.valid == 1 and report.rejected == 1
    (entry,) = quarantine
    assert entry["code"] == "line_too_long" and entry["line"] == 1
    assert entry["raw_truncated_from_bytes"] > 5000 and len(entry["raw"]) <= 64 * 1024
    assert rows[0]["line"] == 2


def test_accounting_invariant_over_many_files(tmp_path):
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_bytes(b"\n".join([_line(GOOD), b"{x", b"", _line(GOOD)]))
    b.write_bytes(b"\n".join([b"[]", b"", b"", _line(GOOD)]) + b"\n")
    report = validate_files([a, b], tmp_path / "out")
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["lines"] == written["valid"] + written["rejected"] + written["blank"] == 8
    assert written["by_code"] == {"invalid_json": 1, "not_an_object": 1}
    assert written["sources"][str(a)] == {"lines": 4, "valid": 2, "rejected": 1, "blank": 1, "format": "openchat", "detected": False}
    assert report.valid == 3


def test_max_rejected_fraction_fails_with_clear_message_after_writing_outputs(tmp_path):
    with pytest.raises(RejectedFractionExceeded, match=r"1 of 2 non-blank lines were rejected \(50.0%\)"):
        _run(tmp_path, [_line(GOOD), b"{x"], max_rejected_fraction=0.25)
    assert (tmp_path / "out" / "report.json").exists() and (tmp_path / "out" / "quarantine.jsonl").exists()


def test_max_rejected_fraction_passes_when_under(tmp_path):
    report, _, _ = _run(tmp_path, [_line(GOOD), _line(GOOD), _line(GOOD), b"{x"], max_rejected_fraction=0.3)
    assert report.rejected == 1


def test_missing_input_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        validate_files([tmp_path / "nope.jsonl"], tmp_path / "out")


def test_unicode_content_round_trips(tmp_path):
    obj = {"items": [{"role": "user", "content": "你好 🌍 \u0000 nul"}, {"role": "assistant", "content": "<|end_of_turn|> </s>"}]}
    _, _, rows = _run(tmp_path, [_line(obj)])
    assert rows[0]["items"][0]["content"] == "你好 🌍 \u0000 nul"


# -- the Rust fast path never disagrees with the rules --------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from openchat_core.data.rules import FastPath, ValidRecord, parse_line  # noqa: E402

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=5), st.sampled_from(["\ud800", "ok\udfffok", "😀"]), st.lists(st.integers(), max_size=2))
_MESSAGE = st.dictionaries(st.sampled_from(["role", "content", "weight", "extra"]), _VALUES, max_size=4).map(
    lambda d: d) | st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "bot", "Assistant"]),
                                          "content": st.one_of(st.text(max_size=8), st.sampled_from(["\ud800"]), st.integers()),
                                          "weight": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                                                              st.integers(min_value=-5, max_value=10**400), st.just("1"))})
_CONV = st.fixed_dictionaries({"items": st.one_of(st.lists(_MESSAGE, max_size=3), _VALUES)},
                              optional={"condition": _VALUES, "system": _VALUES, "other": _VALUES})


@settings(max_examples=400, deadline=None)
@given(obj=st.one_of(_CONV, _VALUES))
def test_fast_path_agrees_with_rules(obj):
    raw = json.dumps(obj, ensure_ascii=False, allow_nan=True).encode("utf-8", errors="surrogatepass")
    slow = parse_line(raw)
    fast = FastPath().parse(raw)
    if fast is None:
        return  # refusals always go through the slow path, which decides
    assert isinstance(slow, ValidRecord), (raw, slow)
    assert [(m.role, m.content, m.weight) for m in fast.items] == [(m["role"], m["content"], m["weight"]) for m in slow.items]
    assert (fast.condition, fast.system) == (slow.condition, slow.system)
    assert sorted(FastPath.unknown_keys(fast)) == sorted(slow.unknown_keys)


def test_huge_integer_weight_is_non_finite_not_a_crash(tmp_path):
    entry = _single_rejection(tmp_path, b'{"items": [{"role": "assistant", "content": "x", "weight": 1' + b"0" * 400 + b"}]}")
    assert entry["code"] == "non_finite_number" and entry["field"] == "items[0].weight"


# -- line splitting is exact at every block boundary ----------------------------------------------------------
import io  # noqa: E402

from openchat_core.data.validate import iter_raw_lines  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=12),
       crlf=st.booleans(), bom=st.booleans(), final_newline=st.booleans(),
       block=st.integers(min_value=1, max_value=17), limit=st.integers(min_value=4, max_value=40))
def test_iter_raw_lines_matches_plain_split(lines, crlf, bom, final_newline, block, limit):
    end = b"\r\n" if crlf else b"\n"
    data = (b"\xef\xbb\xbf" if bom else b"") + end.join(lines) + (end if final_newline and lines else b"")
    got = list(iter_raw_lines(io.BytesIO(data), max_line_bytes=limit, block_size=block))
    text = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a leading BOM is dropped, whoever wrote it
    expected = text.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert [g.number for g in got] == list(range(1, len(expected) + 1))
    for g, raw in zip(got, expected):
        raw_len = len(raw) + (1 if raw is not expected[-1] or text.endswith(b"\n") else 0)
        if len(raw) > limit:
            assert g.truncated and g.data == raw[:limit]
        else:
            assert not g.truncated and g.data == (raw[:-1] if raw.endswith(b"\r") else raw)
