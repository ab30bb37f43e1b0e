"""Usage telemetry is off in every process the project starts, and a user can opt back in."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openchat_core.serve_env import checkout_env, find_serve_python
from openchat_core.telemetry import OPT_IN_ENV, TELEMETRY_OFF, telemetry_defaults, without_telemetry
from openchat_core.training.launcher import launch_env

# variables whose mere presence makes MLflow think it runs in CI (and stay quiet for that reason alone)
_CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TF_BUILD")


@pytest.fixture()
def bare_env(monkeypatch):
    """This process's environment without any telemetry switch (as a user's shell would be)."""
    for name in (*TELEMETRY_OFF, OPT_IN_ENV):
        monkeypatch.delenv(name, raising=False)


def _clean_base() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in TELEMETRY_OFF and k not in _CI_MARKERS and k != OPT_IN_ENV}


@pytest.mark.usefixtures("bare_env")
def test_trainer_and_serving_processes_get_every_switch():
    for name, env in {"trainer (launcher)": launch_env(1), "serving/eval subprocess": checkout_env()}.items():
        missing = {k: v for k, v in TELEMETRY_OFF.items() if env.get(k) != v}
        assert not missing, f"{name} environment lacks {missing}"


@pytest.mark.usefixtures("bare_env")
def test_user_can_opt_back_in(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # one tool back on: kept as the user set it
    env = launch_env(1)
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "false" and env["VLLM_NO_USAGE_STATS"] == "1"
    monkeypatch.setenv(OPT_IN_ENV, "on")  # everything back on: none of the defaults is applied
    assert telemetry_defaults() == {}
    assert not set(TELEMETRY_OFF) - {"MLFLOW_DISABLE_TELEMETRY"} & set(checkout_env())


def test_mlflow_telemetry_client_is_disabled():
    from mlflow.telemetry.client import get_telemetry_client

    assert get_telemetry_client() is None  # this (test) process
    # a fresh process that does not look like CI, with only the project's switches: MLflow builds no client
    code = ("import mlflow; from mlflow.telemetry.client import get_telemetry_client as g; "
            "from mlflow.telemetry.utils import is_telemetry_disabled as d; print(d(), g() is None)")
    out = subprocess.run([sys.executable, "-c", code], env=without_telemetry(_clean_base()), capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["True", "True"]


def test_vllm_in_the_serving_env_reports_no_usage():
    serve_python = find_serve_python()
    if serve_python is None:
        pytest.fail("no serving environment (.venv-serve): run scripts/setup.sh serve")
    code = "from vllm.usage.usage_lib import is_usage_stats_enabled as e; print(e())"
    out = subprocess.run([str(serve_python), "-c", code], env=checkout_env(_clean_base()), capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out[-1] == "False"
