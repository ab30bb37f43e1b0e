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
    assert pq.read_metadata(tokens).num_rows == first.train.tokens.report["counts"]["rows"] == 600
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
    reformatted = data_flow(str(cfg), [*chatml, "tokenize.condition_format=Quality: {condition}"])
    assert not reformatted.train.tokens.cached and reformatted.train.tokens.path != rendered.train.tokens.path

    import asyncio

    async def artifact_keys():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    keys = asyncio.run(artifact_keys())
    assert {"validation-train", "conditions-train", "token-stats-train"} <= keys


def test_rejected_fraction_fails_the_flow_with_reason(prefect_harness, tmp_path, demo_data_dir):
    from flows.data import data_flow
    from openchat_core.data.validate import RejectedFractionExceeded

    with pytest.raises(RejectedFractionExceeded, match="quarantine.jsonl"):
        data_flow(str(_config(tmp_path, demo_data_dir)), ["data.max_rejected_fraction=0.001"])
