"""The pipeline on object storage: `storage.root=s3://bucket/prefix` against moto's S3 server on loopback (s3fs through fsspec).

Every epoch checkpoint is published to the bucket (complete once its `_SUCCESS` is there), evaluation,
registration and deployment read it from there, the champion is served (transformers engine, to keep
this short: the vLLM path is covered by test_e2e_pipeline), and a training whose local disk is gone
resumes from the published state.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "openchat-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3(s3_endpoint, monkeypatch, tmp_path):
    """AWS settings for this process and the trainer it starts (botocore/s3fs read AWS_ENDPOINT_URL), and an empty bucket."""
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": s3_endpoint, "OPENCHAT_SCRATCH": str(tmp_path / "scratch")}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    yield fs


def test_pipeline_on_s3_publishes_every_epoch_serves_the_champion_and_resumes_from_the_bucket(prefect_harness, s3, tmp_path,
                                                                                             demo_data_dir):
    from openai import OpenAI

    from flows.pipeline import pipeline_flow
    from openchat_core.registry.deployment import ensure_admin_key
    from openchat_core.serving.deploy import admin_status, stop_server
    from openchat_core.ports import free_port
    from storage.layout import scratch_root

    port = free_port()
    config = write_config(tmp_path, demo_data_dir, "s3-demo", storage={"root": f"s3://{BUCKET}/prefix"},
                          tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"},
                          serve={"enabled": True, "port": port, "engine": "transformers"},
                          eval={"eval_data": None, "primary_metric": "eval/loss", "direction": "minimize"})  # held-out loss only: short
    try:
        summary = pipeline_flow(config)
        assert summary.decision["action"] == "promoted" and [e["epoch"] for e in summary.epochs] == [0, 1]

        # every epoch in the bucket, each complete, and the stage complete after them
        (train_dir,) = s3.glob(f"{BUCKET}/prefix/s3-demo/stages/train/*")
        for epoch in (0, 1):
            assert s3.exists(f"{train_dir}/ep_{epoch}/_SUCCESS") and s3.exists(f"{train_dir}/ep_{epoch}/model.safetensors")
        assert s3.exists(f"{train_dir}/_SUCCESS") and len(s3.glob(f"{train_dir}/state/*/openchat_state.json")) == 1

        # the champion is served, and answers through the official client
        client = OpenAI(base_url=summary.deployment["openai_base_url"], api_key="none", timeout=60)
        reply = client.chat.completions.create(model="s3-demo", messages=[{"role": "user", "content": "Add 2 and 5"}], max_tokens=4)
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
    finally:
        status = admin_status(f"http://127.0.0.1:{port}", ensure_admin_key(scratch_root() / "serving"))
        if status is not None:
            stop_server(status["pid"])

    # resume from the published state: the training machine's disk is gone and the stage is not marked complete
    import shutil

    from flows.data import layout_for

    shutil.rmtree(scratch_root() / "work")
    s3.rm(f"{train_dir}/_SUCCESS")
    resumed = _train_again(load_config_for(config), layout_for(load_config_for(config)))
    work = scratch_root() / "work" / "s3-demo" / "train" / resumed.key
    assert not resumed.cached and [c.epoch for c in resumed.checkpoints] == [0, 1] and s3.exists(f"{train_dir}/_SUCCESS")
    assert (work / "ep_0" / "model.safetensors").is_file() and (work / "ep_1" / "model.safetensors").is_file()  # from the bucket
    steps = work / "train_log.jsonl"
    assert not steps.exists() or not steps.read_text().strip()  # resumed after the last epoch: no step trained again


def load_config_for(path):
    from openchat_core.config import load_config

    return load_config(path, [])


def _train_again(cfg, layout):
    from prefect import flow

    from flows.data import run_data_stages
    from tasks.train import train_task

    @flow(name="train-again")
    def again():
        data = run_data_stages(cfg)
        return train_task(layout, data.train.tokens_file, data.train.tokens.key, data.eval.tokens_file, data.eval.tokens.key, cfg, None)

    return again()
