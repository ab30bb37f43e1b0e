"""Mixing: dedup across sources keeps the higher-weight copy, seeded sampling is deterministic, filters and counts add up."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from openchat_core.data.conversations_io import CONVERSATION_SCHEMA, ConversationWriter
from openchat_core.data.mix import MixPolicy, SourceLimits, mix_file

WEIGHTS = {"GPT4": 1.0, "GPT3": 0.1}


def _conv(question: str, answer: str, system: str = "") -> tuple[str, list[dict]]:
    return system, [{"role": "user", "content": question, "weight": None}, {"role": "assistant", "content": answer, "weight": None}]


def _write(path, rows):
    """rows: (source, condition, system, items)."""
    with ConversationWriter(path, batch_rows=7) as writer:
        for line, (source, condition, system, items) in enumerate(rows, start=1):
            writer.write(source, line, condition, system, items)
    return path


def _kept(out) -> list[tuple[str, int]]:
    return [(r["source"], r["line"]) for r in pq.read_table(out / "conversations.parquet").to_pylist()]


def test_dedup_keeps_the_higher_weight_copy_whitespace_insensitive_and_counts_per_source(tmp_path):
    rows = [
        ("gpt3.jsonl", "GPT3", *_conv("What is 2+2?", "4")),
        ("gpt3.jsonl", "GPT3", *_conv("Hi", "Hello")),
        ("gpt4.jsonl", "GPT4", *_conv("What is  2+2? ", "4\n")),  # same text after normalisation: kept, the GPT3 copy goes
        ("gpt4.jsonl", "GPT4", *_conv("Hi", "Hello", system="Be kind.")),  # another system prompt: not a duplicate
        ("gpt4.jsonl", "GPT4", *_conv("Bye", "Bye")),
        ("gpt4.jsonl", "GPT4", *_conv("Bye", "Bye")),  # same weight: the earlier copy stays
    ]
    src = _write(tmp_path / "in.parquet", rows)
    report = mix_file(src, tmp_path / "out", MixPolicy(), [SourceLimits("gpt3", ("gpt3.jsonl",)), SourceLimits("gpt4", ("gpt4.jsonl",))], WEIGHTS)
    assert _kept(tmp_path / "out") == [("gpt3.jsonl", 2), ("gpt4.jsonl", 3), ("gpt4.jsonl", 4), ("gpt4.jsonl", 5)]
    table = {(r["source"], r["condition"]): r for r in report["table"]}
    assert table[("gpt3", "GPT3")]["duplicate"] == 1 and table[("gpt4", "GPT4")]["duplicate"] == 1
    assert report["totals"] == {"input": 6, "too_short": 0, "too_long": 0, "duplicate": 2, "sampled_out": 0, "kept": 4}
    assert pq.read_schema(tmp_path / "out" / "conversations.parquet").remove_metadata() == CONVERSATION_SCHEMA

    report = mix_file(src, tmp_path / "nodedup", MixPolicy(dedup=False), [], WEIGHTS)
    assert report["totals"]["kept"] == 6 and report["table"][0]["source"] == "gpt3.jsonl"  # unlisted files are their own source


def test_sampling_is_seeded_deterministic_and_capped(tmp_path):
    rows = [("a.jsonl", "GPT4", *_conv(f"q{i}", f"a{i}")) for i in range(200)] + [("b.jsonl", "GPT3", *_conv(f"b{i}", "x")) for i in range(50)]
    src = _write(tmp_path / "in.parquet", rows)
    sources = [SourceLimits("a", ("a.jsonl",), sample_fraction=0.25), SourceLimits("b", ("b.jsonl",), max_conversations=10, sample_fraction=0.5)]

    def run(name, seed, data=src):
        report = mix_file(data, tmp_path / name, MixPolicy(seed=seed), sources, WEIGHTS, batch_rows=16)
        return _kept(tmp_path / name), report

    first, report = run("s0", 0)
    again, _ = run("s0-again", 0)
    other, _ = run("s1", 1)
    assert first == again and first != other
    assert {r["source"]: (r["kept"], r["sampled_out"]) for r in report["table"]} == {"a": (50, 150), "b": (10, 40)}
    # the choice follows the conversations, not their position: reversed rows keep the same conversations
    reversed_src = _write(tmp_path / "rev.parquet", rows[::-1])
    rev, _ = run("rev", 0, reversed_src)
    assert sorted(len(rows) + 1 - line for _, line in rev) == sorted(line for _, line in first)


def test_length_filters(tmp_path):
    long_conv = [{"role": "user", "content": "q", "weight": None}, {"role": "assistant", "content": "a", "weight": None}] * 3
    rows = [("f", "GPT4", *_conv("q", "a")), ("f", "GPT4", "", long_conv), ("f", "GPT4", *_conv("q" * 50, "a"))]
    report = mix_file(_write(tmp_path / "in.parquet", rows), tmp_path / "out", MixPolicy(max_turns=4, max_chars=40, min_chars=2), [], WEIGHTS)
    assert report["totals"] == {"input": 3, "too_short": 0, "too_long": 2, "duplicate": 0, "sampled_out": 0, "kept": 1}
    report = mix_file(_write(tmp_path / "in2.parquet", rows), tmp_path / "out2", MixPolicy(min_turns=3, min_chars=3), [], WEIGHTS)
    assert report["totals"]["too_short"] == 2 and _kept(tmp_path / "out2") == [("f", 2)]


def test_policy_ranges_say_how_to_fix():
    with pytest.raises(ValidationError, match="max_turns=1 is below min_turns=2"):
        MixPolicy(min_turns=2, max_turns=1)


def test_mix_command_prints_the_table_and_names_a_bad_setting(tmp_path):
    from typer.testing import CliRunner

    from openchat_core.cli import build_app

    src = _write(tmp_path / "in.parquet", [("a.jsonl", "GPT3", *_conv("q", "a")), ("b.jsonl", "GPT4", *_conv("q", "a")),
                                           ("b.jsonl", "GPT4", *_conv("q " * 20, "a"))])
    runner = CliRunner()
    args = ["mix", "--in", str(src), "--out", str(tmp_path / "out"), "GPT4=1.0", "GPT3=0.1", "--policy", "max_chars=20"]
    result = runner.invoke(build_app(), args)
    assert result.exit_code == 0 and "3 conversations: 1 kept, 1 duplicates, 1 filtered by length" in result.output
    assert _kept(tmp_path / "out") == [("b.jsonl", 2)]
    result = runner.invoke(build_app(), [*args[:-1], "max_char=20"])
    assert result.exit_code == 1 and "max_char: unknown key" in result.output
