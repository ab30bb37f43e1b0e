"""`openchat up`: the UIs and a worker, for people who want them (the pipeline itself needs none of this).

Starts on 127.0.0.1: a Prefect server (same database as the embedded runs, so past runs show up),
a `local-process` work pool with a worker and the deployments of prefect.yaml, and an MLflow
server on the same tracking store and artifact root as the pipeline. Stops everything on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer

from openchat_core.telemetry import without_telemetry
from storage.layout import local_mlflow_artifact_root, local_mlflow_tracking_uri

WORK_POOL = "local-process"
REPO = Path(__file__).resolve().parents[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _wait(url: str, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"{what} did not come up at {url} within {timeout_s:.0f} s")


def run_services(storage_root: Path, prefect_port: int, mlflow_port: int, deploy: bool) -> None:
    root = storage_root.resolve()
    (root / "prefect").mkdir(parents=True, exist_ok=True)
    api = f"http://127.0.0.1:{prefect_port}/api"
    env = without_telemetry({**os.environ, "PREFECT_HOME": str(root / "prefect"), "PREFECT_API_URL": api,
                             "OPENCHAT_PROJECT_DIR": str(REPO)})
    logs = root / "services"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen] = []

    def start(name: str, cmd: list[str]) -> None:
        log = open(logs / f"{name}.log", "ab")
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SIGTERM too runs the cleanup below (services have own sessions)
    try:
        start("prefect-server", [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)])
        start("mlflow-server", [_bin("mlflow"), "server", "--backend-store-uri", local_mlflow_tracking_uri(root),
                                "--default-artifact-root", local_mlflow_artifact_root(root), "--host", "127.0.0.1", "--port", str(mlflow_port)])
        _wait(f"{api}/health", "Prefect server")
        if deploy:
            subprocess.run([_bin("prefect"), "--no-prompt", "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"],
                           env=env, cwd=REPO, check=True, capture_output=True)
            subprocess.run([_bin("prefect"), "--no-prompt", "deploy", "--all"], env=env, cwd=REPO, check=True, capture_output=True)
            start("prefect-worker", [_bin("prefect"), "worker", "start", "--pool", WORK_POOL])
        _wait(f"http://127.0.0.1:{mlflow_port}/health", "MLflow server")
        typer.echo(f"Prefect UI:  http://127.0.0.1:{prefect_port}  (deployments: {'registered, worker on ' + WORK_POOL if deploy else 'off'})")
        typer.echo(f"MLflow UI:   http://127.0.0.1:{mlflow_port}")
        typer.echo(f"Point flows at the server with: export PREFECT_API_URL={api}")
        typer.echo(f"logs: {logs}; Ctrl-C stops everything")
        while all(p.poll() is None for p in procs):
            time.sleep(1.0)
        dead = [p.args[1] if len(p.args) > 1 else p.args[0] for p in procs if p.poll() is not None]
        typer.echo(f"a service exited ({dead}); see {logs}", err=True)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
