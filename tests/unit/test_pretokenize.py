"""Pretokenization: invariants (hypothesis), equality with a plain per-conversation reference, streaming and errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openchat_core.data.pretokenize import (
    OPENCHAT_SCHEMA,
    PretokenizeInputError,
    pack_conversations,
    pretokenize_file,
    read_metadata,
)
from openchat_core.data.validate import validate_files
from openchat_core.data.weights import WeightPolicy, assign_weights_file
from openchat_core.templates.conversation import ConversationTemplate, TemplateSpec
from openchat_core.templates.tokenizers import tokenizer_fingerprint


@pytest.fixture(scope="module")
def spec(mistral_tokenizer):
    return TemplateSpec.from_tokenizer("openchat_3.5", mistral_tokenizer)


@pytest.fixture(scope="module")
def template(spec):
    return ConversationTemplate(spec)


def reference_rows(template, convs, max_context):
    """OpenChat's generate_dataset per-conversation logic, written plainly (truncate, strip, shift)."""
    tokens_list, weights_list = template.tokenize(convs)
    rows = []
    for tokens, weights in zip(tokens_list, weights_list):
        tokens, weights = tokens[:max_context], weights[:max_context]
        end = len(weights)
        while end and weights[end - 1] == 0:
            end -= 1
        if not end:
            continue
        tokens, weights = tokens[:end], weights[:end]
        labels = [t if w != 0 else 0 for t, w in zip(tokens, weights)]
        shifted_w = weights[1:] + [0.0]
        rows.append({
            "total_length": end, "num_seqs": float(np.float32(sum(shifted_w))), "seqlens": [end], "nz_input_ids": tokens,
            "nz_position_ids": list(range(end)), "nz_shifted_label_ids": labels[1:] + [0],
            "nz_shifted_loss_weights": [float(np.float32(w)) for w in shifted_w],
        })
    return rows


TEXT = st.lists(st.sampled_from(list("ab c\n好😀") + ["<s>", "</s>", "<|end_of_turn|>", "  "]), max_size=30).map("".join)
MESSAGE = st.fixed_dictionaries({"content": TEXT, "weight": st.sampled_from([0.0, 0.1, 1.0, 0.5, 2.0])})
CONVERSATION = st.builds(
    lambda msgs, cond, system: {"items": [{"role": "user" if i % 2 == 0 else "assistant", **m} for i, m in enumerate(msgs)],
                                "condition": cond, "system": system},
    st.lists(MESSAGE, min_size=1, max_size=6), st.sampled_from(["", "GPT4", "GPT3"]), st.sampled_from(["", "sys", "系统"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(convs=st.lists(CONVERSATION, min_size=1, max_size=8), max_context=st.sampled_from([8, 24, 64, 8192]))
def test_packed_rows_equal_plain_reference_and_hold_invariants(template, convs, max_context):
    batch, stats, lengths = pack_conversations(template.segments(convs), max_context)
    rows = batch.to_pylist()
    assert rows == reference_rows(template, convs, max_context)
    assert stats.rows + stats.dropped_no_supervision == stats.conversations == len(convs)
    assert stats.tokens == sum(r["total_length"] for r in rows) == int(lengths.sum())
    for row in rows:
        n = row["total_length"]
        assert 0 < n <= max_context and row["seqlens"] == [n]
        assert len(row["nz_input_ids"]) == len(row["nz_position_ids"]) == len(row["nz_shifted_label_ids"]) == len(row["nz_shifted_loss_weights"]) == n
        assert row["nz_position_ids"] == list(range(n))
        assert row["nz_shifted_loss_weights"][-1] == 0.0 and row["nz_shifted_label_ids"][-1] == 0
        for i in range(n - 1):  # a label is the next token exactly where the next token is supervised
            supervised = row["nz_shifted_loss_weights"][i] != 0
            assert row["nz_shifted_label_ids"][i] == (row["nz_input_ids"][i + 1] if supervised else 0)
        if n >= 2:
            assert row["nz_shifted_loss_weights"][n - 2] != 0  # trailing zero-weight tokens were dropped
        assert row["num_seqs"] == pytest.approx(sum(row["nz_shifted_loss_weights"]), rel=1e-5)


def _write_jsonl(path, convs):
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs))
    return path


CONVS = [
    {"condition": "GPT4", "items": [{"role": "user", "content": "2+2?", "weight": 0}, {"role": "assistant", "content": "4", "weight": 1}]},
    {"condition": "GPT3", "system": "Be terse.", "items": [{"role": "user", "content": "hi", "weight": 0}, {"role": "assistant", "content": "yo", "weight": 0.1}]},
    {"items": [{"role": "user", "content": "nothing learned", "weight": 0}, {"role": "assistant", "content": "x", "weight": 0}]},
] * 40


def test_file_output_schema_metadata_and_counts(tmp_path, spec, mistral_tokenizer):
    src = _write_jsonl(tmp_path / "in.jsonl", CONVS)
    report = pretokenize_file(src, tmp_path / "out.parquet", spec, tokenizer_fingerprint=tokenizer_fingerprint(mistral_tokenizer), batch_rows=16)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.remove_metadata() == OPENCHAT_SCHEMA
    meta = read_metadata(tmp_path / "out.parquet")
    assert meta["model_type"] == "openchat_v3.2_mistral" and meta["max_context"] == 8192
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(mistral_tokenizer)
    assert meta["counts"]["conversations"] == 120 and meta["counts"]["rows"] == 80 and meta["counts"]["dropped_no_supervision"] == 40
    assert table.num_rows == report.counts.rows == 80
    assert not list(tmp_path.glob("*.partial"))


def test_parquet_input_from_earlier_stages_equals_jsonl_input(tmp_path, spec):
    src = _write_jsonl(tmp_path / "in.jsonl", CONVS)
    validate_files([src], tmp_path / "v")
    assign_weights_file(tmp_path / "v" / "conversations.parquet", tmp_path / "w",
                        WeightPolicy(condition_weights={"GPT4": 1.0, "GPT3": 0.1, "": 0.0}, explicit_weights="keep"))
    pretokenize_file(src, tmp_path / "a.parquet", spec, tokenizer_fingerprint="x")
    pretokenize_file(tmp_path / "w" / "weighted.parquet", tmp_path / "b.parquet", spec, tokenizer_fingerprint="x")
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))


def test_workers_give_identical_output(tmp_path, spec):
    src = _write_jsonl(tmp_path / "in.jsonl", CONVS)
    pretokenize_file(src, tmp_path / "one.parquet", spec, tokenizer_fingerprint="x", workers=1, batch_rows=7)
    pretokenize_file(src, tmp_path / "two.parquet", spec, tokenizer_fingerprint="x", workers=2, batch_rows=7)
    assert pq.read_table(tmp_path / "one.parquet").equals(pq.read_table(tmp_path / "two.parquet"))


def test_streams_in_row_groups(tmp_path, spec):
    src = _write_jsonl(tmp_path / "in.jsonl", CONVS)
    pretokenize_file(src, tmp_path / "out.parquet", spec, tokenizer_fingerprint="x", batch_rows=10)
    assert pq.ParquetFile(tmp_path / "out.parquet").num_row_groups == 12  # one per input batch: memory bounded by batch size


def test_invalid_jsonl_line_names_file_line_and_field(tmp_path, spec):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(CONVS[0]) + "\n\n" + '{"items": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(PretokenizeInputError, match=r"in.jsonl:3 \[field items\[0\].role\]"):
        pretokenize_file(src, tmp_path / "out.parquet", spec, tokenizer_fingerprint="x")
    assert not (tmp_path / "out.parquet").exists()


def test_missing_weight_names_source_line(tmp_path, spec):
    src = _write_jsonl(tmp_path / "in.jsonl", [CONVS[0], {"items": [{"role": "assistant", "content": "no weight"}]}])
    with pytest.raises(PretokenizeInputError, match=r"in.jsonl:2 \[field items\[0\].weight\].*assign-weights"):
        pretokenize_file(src, tmp_path / "out.parquet", spec, tokenizer_fingerprint="x")


def test_per_sequence_loss_flag_recorded_and_applied(tmp_path, spec):
    src = _write_jsonl(tmp_path / "in.jsonl", CONVS[:2])
    pretokenize_file(src, tmp_path / "out.parquet", spec, tokenizer_fingerprint="x", per_sequence_loss=True)
    assert read_metadata(tmp_path / "out.parquet")["per_sequence_loss"] is True
    row = pq.read_table(tmp_path / "out.parquet").to_pylist()[0]
    assert row["num_seqs"] == pytest.approx(1.0, rel=1e-5)  # one assistant turn of weight 1, divided by its length
