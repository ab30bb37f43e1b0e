"""evaluate-and-promote under a real Prefect server and MLflow store: per-epoch metrics, selection, registration, decisions."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path, demo_data_dir, **eval_settings):
    return write_config(tmp_path, demo_data_dir, "evaltest",
                        eval={"primary_metric": "eval/loss", "direction": "minimize", **eval_settings})


def _with_coding(tmp_path, demo_data_dir):
    """The demo eval sets plus two real coding/humaneval rows (tests/fixtures/coding)."""
    eval_data = tmp_path / "eval_data"
    shutil.copytree(demo_data_dir / "eval_data", eval_data)
    shutil.copytree(ROOT / "tests/fixtures/coding/eval_data/coding", eval_data / "coding")
    return eval_data


def _artifact_keys():
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    return asyncio.run(read())


def test_epochs_are_evaluated_best_registered_and_promoted_then_rerun_is_idempotent(prefect_harness, tmp_path, demo_data_dir):
    from mlflow.tracking import MlflowClient

    from flows.evaluate import evaluate_and_promote_flow
    from openchat_core.registry.store import ModelRegistry

    config = _config(tmp_path, demo_data_dir, eval_data=str(_with_coding(tmp_path, demo_data_dir)), eval_sets=["demo", "coding"])
    out = evaluate_and_promote_flow(config)
    losses = {e.epoch: e.metrics["eval/loss"] for e in out.evals}
    assert sorted(losses) == [0, 1] and all("gen/accuracy" in e.metrics and "gen/demo/exact/accuracy" in e.metrics for e in out.evals)
    assert out.registration.epoch == min(losses, key=losses.get)  # the lowest held-out loss wins
    assert out.decision["action"] == "promoted" and out.decision["champion_before"] is None

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    registry = ModelRegistry(uri, "evaltest")
    champion = registry.by_alias("champion")
    assert champion.version == out.registration.version == "1"
    for tag in ("openchat.epoch", "openchat.primary_metric", "openchat.data_digest", "openchat.pipeline_run_id", "openchat.model_type",
                "openchat.git_revision", "openchat.eval_key", "openchat.metric.eval/loss", "prefect.flow_run_id"):
        assert champion.tags.get(tag) not in (None, "", "-"), tag
    assert champion.tags["openchat.model_type"] == "openchat_v3.2_mistral"

    client = MlflowClient(uri)
    train_run = client.search_runs([client.get_experiment_by_name("evaltest").experiment_id], "attributes.run_name = 'train'")[0]
    for metric in ("gen/accuracy", "gen/coding/humaneval/pass1_base", "gen/coding/humaneval/pass1_plus"):
        assert [m.step for m in client.get_metric_history(train_run.info.run_id, metric)] == [0, 1], metric  # step = epoch
    assert {"epoch-metrics", "promotion-decision"} <= _artifact_keys()

    again = evaluate_and_promote_flow(config)
    assert again.registration.version == "1" and again.decision["action"] == "unchanged"
    assert [v.version for v in registry.versions()] == ["1"]


def test_a_failing_epoch_is_reported_and_the_others_still_count(prefect_harness, tmp_path, demo_data_dir):
    from flows.evaluate import evaluate_and_promote_flow
    from flows.train import train_flow

    config = _config(tmp_path, demo_data_dir, primary_metric="gen/accuracy", direction="maximize")
    trained = train_flow(config)
    broken = tmp_path / "broken" / "ep_7"
    shutil.copytree(trained.checkpoints[0].path, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    (broken / "openchat.json").write_text((broken / "openchat.json").read_text().replace('"epoch": 0', '"epoch": 7'))
    out = evaluate_and_promote_flow(config, checkpoints=[str(broken), trained.checkpoints[1].path])
    failed = [e for e in out.evals if e.error]
    assert [e.epoch for e in failed] == [7] and out.registration.epoch == 1


def test_coding_pass_at_1_is_an_epoch_metric_and_picks_the_epoch(prefect_harness, tmp_path, demo_data_dir):
    from flows.evaluate import evaluate_and_promote_flow
    from openchat_core.registry.store import ModelRegistry
    from tests.unit.eval_models import save_tiny_checkpoint

    metric = "gen/coding/humaneval/pass1_plus"
    config = _config(tmp_path, demo_data_dir, eval_data=str(_with_coding(tmp_path, demo_data_dir)), eval_sets=["demo", "coding"],
                     primary_metric=metric, direction="maximize", code_timeout_s=30)
    first = save_tiny_checkpoint(tmp_path / "ckpts" / "ep_0")  # evaluate given checkpoints: no training needed here
    second = shutil.copytree(first, tmp_path / "ckpts" / "ep_1")
    (second / "openchat.json").write_text((second / "openchat.json").read_text().replace('"epoch": 0', '"epoch": 1'))
    out = evaluate_and_promote_flow(config, checkpoints=[str(first), str(second)])
    assert [e.epoch for e in out.evals] == [0, 1] and not any(e.error for e in out.evals)
    for e in out.evals:
        assert {metric, "gen/coding/humaneval/pass1_base", "gen/coding/humaneval/accuracy", "gen/demo/exact/accuracy"} <= set(e.metrics)
    assert out.registration.metric == metric
    assert out.registration.epoch == 1  # the random model passes nothing in either epoch: the tie goes to the later one

    # per-epoch MLflow history of the coding metrics: the first test; here: the version records the metric it was chosen on
    version = ModelRegistry(f"sqlite:///{tmp_path}/store/mlflow.db", "evaltest").version(out.registration.version)
    assert float(version.tags[f"openchat.metric.{metric}"]) == out.evals[1].metrics[metric]


def test_lm_eval_gate_scores_the_served_candidate_and_decides_on_them(prefect_harness, tmp_path, demo_data_dir):
    """eval.harness: the candidate is served on a loopback port (transformers engine here: quick to start), lm-eval's
    multiple-choice task runs against it, and its score is the primary metric of selection and promotion."""
    from pathlib import Path

    from flows.evaluate import evaluate_and_promote_flow
    from openchat_core.registry.store import ModelRegistry
    from openchat_core.models.checkpoint import save_checkpoint
    from openchat_core.models.model_factory import load_base_model

    pytest.importorskip("lm_eval")
    tasks = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval"
    model, tokenizer = load_base_model("preset:tiny-mistral", seed=0)
    candidate = save_checkpoint(tmp_path / "candidate" / "ep_0", model, tokenizer, "openchat_3.5", {"epoch": 0})
    config = _config(tmp_path, demo_data_dir, eval_data=None, harness=["openchat_mc"], harness_include=str(tasks),
                     primary_metric="harness/openchat_mc/acc", direction="maximize")
    out = evaluate_and_promote_flow(config, checkpoints=[str(candidate)])
    (scored,) = out.evals
    acc = scored.metrics["harness/openchat_mc/acc"]
    assert acc in (0.0, 0.25, 0.5, 0.75, 1.0) and "eval/loss" in scored.metrics  # 4 questions
    assert (out.registration.metric, out.registration.value) == ("harness/openchat_mc/acc", acc)
    assert out.decision["action"] == "promoted" and out.decision["harness"] == {"harness/openchat_mc/acc": acc}
    version = ModelRegistry(f"sqlite:///{tmp_path}/store/mlflow.db", "evaltest").by_alias("champion")
    assert float(version.tags["openchat.metric.harness/openchat_mc/acc"]) == acc
    assert "promotion-decision" in _artifact_keys()
