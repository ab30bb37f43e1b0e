"""The paths people use, as they use them, on reduced configs.

- `openchat up` (Prefect server, work pool, worker, deployments, MLflow server), then the `on-demand`
  deployment started through the Prefect API (what the UI's "Run" does), completed by the worker, with
  its MLflow run and registry decision read back from the MLflow server; then a `nightly` run on
  unchanged data that does no work.
- The README's `make demo` path: `openchat demo` on a reduced config (the transformers engine serves,
  to keep it short; vLLM serving is covered by test_e2e_pipeline).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from openchat_core.telemetry import without_telemetry
from openchat_core.ports import free_port
from tests.integration.conftest import write_config
from tests.integration.servers import stop_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPENCHAT = str(Path(sys.executable).parent / "openchat")
REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = without_telemetry({k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") or k == "PREFECT_SERVER_ANALYTICS_ENABLED"})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])  # this checkout's code in every process
    return env


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the command exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(1.0)
    raise AssertionError(f"{text!r} did not appear within {timeout_s:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def _flow_run_logs(flow_run_id, expect: str | None = None, timeout_s: float = 30.0) -> str:
    """The flow run's log as the UI shows it; with `expect`, waits for that text (the worker ships logs in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        text = "\n".join(log.message for log in logs)
        if expect is None or expect in text or time.monotonic() > deadline:
            return text
        time.sleep(2.0)


def _task_names(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0] for r in runs}


def test_openchat_up_runs_the_on_demand_deployment_then_the_nightly_does_nothing(tmp_path, demo_data_dir):
    from mlflow.tracking import MlflowClient
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from openchat_core.registry.store import CHAMPION, ModelRegistry

    root = tmp_path / "runs"
    prefect_port, mlflow_port = free_port(), free_port()
    config = write_config(tmp_path, demo_data_dir, "svc-demo", storage={"root": str(root)}, train={"epochs": 1},
                          eval={"eval_data": None, "primary_metric": "eval/loss", "direction": "minimize"})
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen([OPENCHAT, "up", "--storage-root", str(root), "--prefect-port", str(prefect_port), "--mlflow-port",
                               str(mlflow_port)], env=_env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_line(log, "MLflow UI:", up, timeout_s=300)  # printed once every service is up and the deployments registered
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{prefect_port}/api"}):
            started = time.monotonic()
            run = run_deployment("openchat-pipeline/on-demand", timeout=900, poll_interval=2,
                                 parameters={"config_path": config, "overrides": [], "deploy": False, "skip_if_unchanged": False})
            print(f"on-demand run through the worker: {time.monotonic() - started:.0f} s")
            assert run.state.is_completed(), f"{run.state}: {_flow_run_logs(run.id)[-3000:]}"

            # its MLflow run and registry decision, read from the MLflow server `openchat up` started
            client = MlflowClient(mlflow_url)
            exp = client.get_experiment_by_name("svc-demo")
            runs = client.search_runs([exp.experiment_id])
            (pipeline,) = [r for r in runs if r.info.run_name == "pipeline"]
            assert pipeline.info.status == "FINISHED" and pipeline.data.tags["prefect.flow_run_id"] == str(run.id)
            registry = ModelRegistry(mlflow_url, "svc-demo")
            assert registry.by_alias(CHAMPION).version == "1" and registry.decisions()[-1]["action"] == "promoted"

            started = time.monotonic()
            nightly = run_deployment("openchat-pipeline/nightly", timeout=600, poll_interval=2, parameters={"config_path": config})
            print(f"nightly run with unchanged data: {time.monotonic() - started:.0f} s")
            assert nightly.state.is_completed(), f"{nightly.state}: {_flow_run_logs(nightly.id)[-3000:]}"
            assert "nothing to do" in _flow_run_logs(nightly.id, expect="nothing to do")
            assert _task_names(nightly.id) <= {"validate", "mix", "assign-weights", "pretokenize"}  # cached data stages only
            assert "train" in _task_names(run.id)
        assert len(client.search_runs([exp.experiment_id])) == len(runs) and [v.version for v in registry.versions()] == ["1"]
    finally:
        stop_group(up, timeout_s=60)  # `openchat up` stops its services on SIGTERM


def test_openchat_demo_on_a_reduced_config(tmp_path):
    from openchat_core.data.demo import DemoSizes, generate_demo_data

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data = tmp_path / "data"
    generate_demo_data(data, sizes=DemoSizes(train=600, eval_per_task=5))  # reduced: the demo finds it and keeps it
    port = free_port()
    cfg.update(storage={"root": str(tmp_path / "runs")},
               data={**cfg["data"], "train": [str(data / "train.jsonl")], "eval": [str(data / "eval.jsonl")]},
               train={**cfg["train"], "epochs": 2, "save_every": 1},
               eval={**cfg["eval"], "eval_data": str(data / "eval_data"), "limit_per_task": 2},
               serve={**cfg["serve"], "port": port, "engine": "transformers"})
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    started = time.monotonic()
    log = tmp_path / "demo.log"
    with log.open("w") as sink:
        result = subprocess.run([OPENCHAT, "demo", "--config", str(config), "--question", "Add 2 and 5"], env=_env(), cwd=REPO,
                                stdout=sink, stderr=subprocess.STDOUT, text=True, timeout=900)
    print(f"openchat demo (reduced): {time.monotonic() - started:.0f} s")
    out = log.read_text(errors="replace")
    pid = next((line.split()[-1] for line in out.splitlines() if line.startswith("Stop the server: kill ")), None)
    try:
        assert result.returncode == 0, out[-4000:]
        assert "demo data already in" in out and "Demo summary" in out and "Registered openchat-demo v1" in out
        assert f"at http://127.0.0.1:{port}/v1" in out and "Q: Add 2 and 5\nA: '" in out
    finally:
        if pid and pid.isdigit():
            from openchat_core.serving.deploy import stop_server

            stop_server(int(pid))
