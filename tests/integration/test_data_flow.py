"""The data flow under a real Prefect engine/server: outputs, artifacts, and cache hits on a re-run."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import write_config

pytestmark = pytest.mark.integration


def _config(tmp_path, demo_data_dir):
    return write_config(tmp_path, demo_data_dir, "datatest", data={"max_rejected_fraction": 0.05})


def test_data_flow_builds_all_stages_then_hits_caches(prefect_harness, tmp_path, demo_data_dir):
    from prefect.client.orchestration import get_client

    from flows.data import data_flow
    from openchat_core.data.pretokenize import read_metadata

    cfg = _config(tmp_path, demo_data_dir)
    first = data_flow(str(cfg))
    assert not first.cached
    report = first.train.validated.report
    assert report["rejected"] == 7 and report["lines"] == report["valid"] + report["rejected"] + report["blank"]
    tokens = Path(first.train.tokens_file)
    mixed = first.train.mixed.report["totals"]
    assert mixed["input"] == 600 and mixed["duplicate"] > 0  # the demo's small tasks repeat conversations word for word
    assert pq.read_metadata(tokens).num_rows == first.train.tokens.report["counts"]["rows"] == mixed["kept"] == 600 - mixed["duplicate"]
    assert first.eval is not None and first.eval.validated.report["rejected"] == 0
    mtime = os.stat(tokens).st_mtime_ns

    second = data_flow(str(cfg))
    assert second.cached  # every stage of both splits came from the content-addressed store
    assert second.train.tokens.path == first.train.tokens.path and os.stat(tokens).st_mtime_ns == mtime

    changed = data_flow(str(cfg), ["weights.condition_weights={'GPT4 Correct': 1.0, 'GPT3': 0.2}"])
    assert changed.train.validated.cached and not changed.train.weighted.cached and not changed.train.tokens.cached

    # tokenize.model_type: chat_template (SmolLM2's ChatML); the condition options are part of the cache key and metadata
    chatml = ["tokenize.model_type=chat_template", "tokenize.tokenizer=preset:smollm2"]
    rendered = data_flow(str(cfg), chatml)
    meta = read_metadata(rendered.train.tokens_file)
    assert rendered.train.weighted.cached and meta["model_type"] == "chat_template"
    assert meta["template"]["eot"] == "<|im_end|>" and meta["template"]["chat_template_options"]["condition_format"] == "Condition: {condition}"
    reformatted = data_flow(str(cfg), [*chatml, "tokenize.condition_format='Quality: {condition}'"])
    assert not reformatted.train.tokens.cached and reformatted.train.tokens.path != rendered.train.tokens.path

    import asyncio

    async def artifact_keys():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    keys = asyncio.run(artifact_keys())
    assert {"validation-train", "mix-train", "conditions-train", "token-stats-train"} <= keys


def test_rejected_fraction_fails_the_flow_with_reason(prefect_harness, tmp_path, demo_data_dir):
    from flows.data import data_flow
    from openchat_core.data.validate import RejectedFractionExceeded

    with pytest.raises(RejectedFractionExceeded, match="quarantine.jsonl"):
        data_flow(str(_config(tmp_path, demo_data_dir)), ["data.max_rejected_fraction=0.001"])


def _two_sources(folder: Path) -> tuple[Path, Path]:
    """A ShareGPT JSONL (30 conversations, 1 bad line) and an Alpaca Parquet (40) whose first 10 repeat the JSONL's last 10."""
    import json

    import pyarrow as pa

    sharegpt = folder / "gpt4.sharegpt.jsonl"
    lines = [json.dumps({"conversations": [{"from": "human", "value": f"Question {i}"}, {"from": "gpt", "value": f"Answer {i}"}]}) for i in range(30)]
    lines.insert(5, json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "bing", "value": "x"}]}))
    sharegpt.write_text("\n".join(lines) + "\n")
    alpaca = folder / "gpt3.alpaca.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": f"Question {i}", "input": "", "output": f"Answer {i}"} for i in range(20, 60)]), alpaca)
    return sharegpt, alpaca


def test_two_source_config_mixes_into_one_dataset_logged_to_mlflow(prefect_harness, tmp_path, demo_data_dir):
    import asyncio

    from mlflow.tracking import MlflowClient
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.data import run_data_stages
    from openchat_core.config import load_config
    from tasks.data import track_data_task
    from tasks.outputs import layout_for
    from tasks.tracking import TrackingContext

    sharegpt, alpaca = _two_sources(tmp_path)
    sources = [{"path": str(sharegpt), "condition": "GPT4 Correct"},
               {"path": str(alpaca), "format": "alpaca", "condition": "GPT3", "max_conversations": 25}]
    cfg = load_config(write_config(tmp_path, demo_data_dir, "twosources", data={"train": sources}))

    @flow(name="two-sources")
    def run():
        data = run_data_stages(cfg)
        layout = layout_for(cfg)
        tracking = TrackingContext.for_config(cfg, layout)
        return data, tracking, track_data_task(tracking, data, cfg, layout)

    data, tracking, run_id = run()
    validated = data.train.validated.report
    assert validated["sources"][str(sharegpt)]["format"] == "sharegpt" and validated["sources"][str(sharegpt)]["detected"]
    assert validated["by_code"] == {"unsupported_role": 1} and validated["valid"] == 70
    table = {row["source"]: row for row in data.train.mixed.report["table"]}
    assert table[str(sharegpt)] == {"source": str(sharegpt), "condition": "GPT4 Correct", "input": 30, "too_short": 0, "too_long": 0,
                                     "duplicate": 0, "sampled_out": 0, "kept": 30}
    assert (table[str(alpaca)]["condition"], table[str(alpaca)]["duplicate"], table[str(alpaca)]["sampled_out"]) == ("GPT3", 10, 5)
    mixed = pq.read_table(Path(data.train.mixed.path) / "conversations.parquet").to_pylist()
    gpt3_questions = {r["items"][0]["content"] for r in mixed if r["condition"] == "GPT3"}
    assert len(gpt3_questions) == 25 and not gpt3_questions & {f"Question {i}" for i in range(20, 30)}  # the GPT4 copies stayed
    assert data.train.tokens.report["counts"]["rows"] == 55

    async def artifact_keys():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    assert "mix-train" in asyncio.run(artifact_keys())
    client = MlflowClient(tracking.uri)
    assert client.get_run(run_id).data.metrics["train/duplicates"] == 10
    assert {a.path for a in client.list_artifacts(run_id, "train/mix")} >= {"train/mix/mix_report.json", "train/mix/mix_table.json"}
    assert "train-mixed" in {d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs}
    assert {a.path for a in client.list_artifacts(run_id, "train/validate")} >= {"train/validate/quarantine_sample.jsonl"}
    assert not (Path(data.train.validated.path) / "quarantine_sample.jsonl").exists()  # the published folder stays as published
