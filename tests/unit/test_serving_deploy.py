"""The deploy helper's process plumbing (the real start/switch runs in tests/integration/test_serving_vllm.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from openchat_core.serving import deploy


def test_repo_root_is_this_checkout():
    import openchat_core

    assert deploy.repo_root() == Path(openchat_core.__file__).resolve().parent.parent


def test_serve_python_comes_from_the_env_var_or_the_repo(monkeypatch, tmp_path):
    monkeypatch.setenv(deploy.SERVE_PYTHON_ENV, sys.executable)
    assert deploy.serve_python() == Path(sys.executable)
    monkeypatch.setenv(deploy.SERVE_PYTHON_ENV, str(tmp_path / "nope"))
    with pytest.raises(deploy.DeployError, match="OPENCHAT_SERVE_PYTHON"):
        deploy.serve_python()
    monkeypatch.delenv(deploy.SERVE_PYTHON_ENV)
    expected = deploy.repo_root() / ".venv-serve" / "bin" / "python"
    if expected.is_file():
        assert deploy.serve_python() == expected
    else:
        with pytest.raises(deploy.DeployError, match=".venv-serve"):
            deploy.serve_python()


def test_keys_go_through_the_environment_not_argv():
    cmd = deploy.server_command("/py", "/models/m", "127.0.0.1", 8123, engine="transformers", served_name="chat",
                                registry_version="4")
    assert cmd[:3] == ["/py", "-m", "openchat_core.serving"]
    assert cmd[cmd.index("--port") + 1] == "8123" and cmd[cmd.index("--registry-version") + 1] == "4"
    env = deploy.server_env(["sk-1", "sk-2"], "adm", base={"PYTHONPATH": "/elsewhere", "OPENCHAT_ADMIN_KEY": "stale"})
    assert env["OPENCHAT_API_KEYS"] == "sk-1,sk-2" and env["OPENCHAT_ADMIN_KEY"] == "adm"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(deploy.repo_root()), "/elsewhere"]  # this checkout first
    assert not any("sk-1" in part or "adm" == part for part in cmd)
    assert "OPENCHAT_ADMIN_KEY" not in deploy.server_env([], None, base={"OPENCHAT_ADMIN_KEY": "stale"})


def test_no_server_and_no_start_is_an_error():
    with pytest.raises(deploy.DeployError, match="start_if_down"):
        deploy.deploy_model("http://127.0.0.1:9", "adm", "/tmp", start_if_down=False)


def test_auto_engine_picks_vllm_only_where_it_imports(tmp_path):
    assert deploy.resolve_engine("transformers", "/no/python") == "transformers"
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # -S: no site-packages, so no vllm
    fake_python.chmod(0o755)
    assert deploy.resolve_engine("auto", fake_python) == "transformers"
