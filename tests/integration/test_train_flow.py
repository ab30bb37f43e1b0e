"""The train flow under a real Prefect server: trainer launched as subprocesses, logs streamed, MLflow nesting, caching."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _config(tmp_path, demo_data_dir, **train):
    return write_config(tmp_path, demo_data_dir, "traintest", train=train)


def _logs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))

    return [log.message for log in asyncio.run(read())]


def test_train_flow_streams_logs_nests_mlflow_runs_and_reuses_finished_training(prefect_harness, tmp_path, demo_data_dir):
    from mlflow.tracking import MlflowClient

    from flows.train import train_flow

    config = _config(tmp_path, demo_data_dir)
    state = train_flow(config, return_state=True)
    out = state.result()
    assert [c.epoch for c in out.checkpoints] == [0, 1] and not out.cached
    assert all("eval/loss" in c.metrics for c in out.checkpoints)
    messages = _logs(state.state_details.flow_run_id)
    assert any("[openchat.train] epoch 1: checkpoint" in m for m in messages)  # the trainer's own output, in the flow run log

    client = MlflowClient(f"sqlite:///{tmp_path}/store/mlflow.db")
    exp = client.get_experiment_by_name("traintest")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs["train"].data.tags["mlflow.parentRunId"] == runs["train-flow"].info.run_id
    assert runs["train-flow"].data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert runs["train"].info.status == "FINISHED" and client.get_metric_history(runs["train"].info.run_id, "train/loss")

    again = train_flow(config)
    assert again.cached and again.checkpoints == out.checkpoints


def test_trainer_failure_fails_the_task_with_the_reason(prefect_harness, tmp_path, demo_data_dir):
    from flows.train import train_flow
    from openchat_core.training.launcher import TrainingFailed

    # the Llama 3 tiny model lacks OpenChat 3.5's <|end_of_turn|>: only the trainer process can find that out
    with pytest.raises(TrainingFailed, match=r"exited with code 1: .*MissingSpecialTokenError: tokenizer has no <\|end_of_turn\|>"):
        train_flow(_config(tmp_path, demo_data_dir), ["model.base=preset:tiny-llama3"])


def test_missing_model_fails_before_launching(prefect_harness, tmp_path, demo_data_dir):
    from flows.train import train_flow

    with pytest.raises(FileNotFoundError, match="not a local Hugging Face model folder"):
        train_flow(_config(tmp_path, demo_data_dir), ["model.base=/nonexistent/model"])
