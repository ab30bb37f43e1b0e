"""C-RLFT condition weights: both policies, unknown conditions, per-condition statistics."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from openchat_core.data.validate import validate_files
from openchat_core.data.weights import UnknownConditionError, WeightPolicy, assign_weights_file, parse_weight_pairs


def _validated(tmp_path, convs):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(c) for c in convs) + "\n")
    validate_files([src], tmp_path / "v")
    return tmp_path / "v" / "conversations.parquet"


CONVS = [
    {"condition": "GPT4", "items": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "good"}]},
    {"condition": "GPT3", "items": [{"role": "user", "content": "q2", "weight": 0.7}, {"role": "assistant", "content": "meh", "weight": 0.9}]},
    {"condition": "GPT3", "items": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "bad"},
                                    {"role": "user", "content": "q4"}, {"role": "assistant", "content": "worse"}]},
]


def _weights(path):
    return [[m["weight"] for m in row["items"]] for row in pq.read_table(path).to_pylist()]


def test_override_assigns_user_zero_and_condition_weight(tmp_path):
    report = assign_weights_file(_validated(tmp_path, CONVS), tmp_path / "w", WeightPolicy(condition_weights={"GPT4": 1.0, "GPT3": 0.1}))
    assert _weights(tmp_path / "w" / "weighted.parquet") == [[0.0, 1.0], [0.0, 0.1], [0.0, 0.1, 0.0, 0.1]]
    assert report.kept_explicit == 0
    gpt3 = report.conditions["GPT3"]
    assert (gpt3.conversations, gpt3.assistant_turns, gpt3.supervised_turns, gpt3.supervised_chars) == (2, 3, 3, len("meh") + len("bad") + len("worse"))
    assert report.conditions["GPT4"].supervised_chars == 4


def test_keep_preserves_explicit_weights(tmp_path):
    policy = WeightPolicy(condition_weights={"GPT4": 1.0, "GPT3": 0.1}, explicit_weights="keep")
    report = assign_weights_file(_validated(tmp_path, CONVS), tmp_path / "w", policy)
    assert _weights(tmp_path / "w" / "weighted.parquet")[1] == [0.7, 0.9]
    assert report.kept_explicit == 2
    assert report.conditions["GPT3"].supervised_turns == 4  # the kept user weight 0.7 supervises too


def test_unknown_condition_error_lists_all_with_location_and_leaves_no_output(tmp_path):
    with pytest.raises(UnknownConditionError) as err:
        assign_weights_file(_validated(tmp_path, CONVS), tmp_path / "w", WeightPolicy(condition_weights={"GPT4": 1.0}))
    assert "'GPT3' (2 conversations, first at" in str(err.value) and "in.jsonl:2" in str(err.value)
    assert not (tmp_path / "w" / "weighted.parquet").exists()


def test_unknown_condition_default_weight(tmp_path):
    policy = WeightPolicy(condition_weights={"GPT4": 1.0}, unknown_condition="default", default_weight=0.25)
    report = assign_weights_file(_validated(tmp_path, CONVS), tmp_path / "w", policy)
    assert _weights(tmp_path / "w" / "weighted.parquet")[2] == [0.0, 0.25, 0.0, 0.25]
    assert report.conditions["GPT3"].weight == 0.25


def test_empty_condition_can_be_mapped(tmp_path):
    path = _validated(tmp_path, [{"items": [{"role": "assistant", "content": "a"}]}])
    assign_weights_file(path, tmp_path / "w", WeightPolicy(condition_weights={"": 0.5}))
    assert _weights(tmp_path / "w" / "weighted.parquet") == [[0.5]]


def test_policy_metadata_is_recorded(tmp_path):
    policy = WeightPolicy(condition_weights={"GPT4": 1.0, "GPT3": 0.1})
    assign_weights_file(_validated(tmp_path, CONVS), tmp_path / "w", policy)
    meta = pq.read_schema(tmp_path / "w" / "weighted.parquet").metadata
    assert json.loads(meta[b"weight_policy"])["condition_weights"] == {"GPT4": 1.0, "GPT3": 0.1}
    assert json.loads((tmp_path / "w" / "weights_report.json").read_text())["conversations"] == 3


@pytest.mark.parametrize("weights", [{}, {"GPT4": -1.0}, {"GPT4": float("nan")}])
def test_policy_rejects_bad_maps(weights):
    with pytest.raises(ValidationError):
        WeightPolicy(condition_weights=weights)


def test_parse_weight_pairs_allows_spaces_in_condition():
    assert parse_weight_pairs(["GPT4 Correct=1", "GPT3=0.1"]) == {"GPT4 Correct": 1.0, "GPT3": 0.1}
    with pytest.raises(ValueError, match="CONDITION=WEIGHT"):
        parse_weight_pairs(["GPT4"])
    with pytest.raises(ValueError, match="not a number"):
        parse_weight_pairs(["GPT4=high"])
