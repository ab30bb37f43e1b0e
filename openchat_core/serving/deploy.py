"""Deploy helper: put a checkpoint behind the OpenAI API, starting the server or switching a running one.

`deploy_model(url, admin_key, model_dir, ...)`:
- If a server answers at `url` (/health), ask it to switch (`POST /admin/load`): it loads the
  checkpoint beside the live model, smoke-tests it and only then makes it live; on failure the
  old model keeps serving and `DeployError` carries the server's reason.
- Otherwise start one: the serving env's python (`$OPENCHAT_SERVE_PYTHON`, else
  `<repo>/.venv-serve/bin/python`) runs `python -m openchat_core.serving ...` in its own process
  group, with this checkout first on PYTHONPATH (so the code that runs is this code, not another
  install) and the keys passed through the environment (never argv, which `ps` shows).
- A switch to a LoRA adapter on the base the server's vLLM engine already holds only adds the
  adapter to that engine (no base reload); `ServerHandle.reused_engine` says so.
- Either way it then waits for /ready, sends one smoke chat completion through the public API,
  checks the answer came from the requested model version, and returns a `ServerHandle`.

Light module: standard library + httpx (no FastAPI, torch or vLLM), so the Prefect deploy task can
import it in the pipeline env.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from openchat_core.serve_env import SERVE_PYTHON_ENV, checkout_env, find_serve_python, repo_root
from openchat_core.serving.settings import ADMIN_KEY_ENV, API_KEYS_ENV



class DeployError(RuntimeError):
    """The model is not serving as asked; the message says why (and what still serves, if anything)."""


@dataclass(frozen=True)
class ServerHandle:
    """Where a model runs. `pid` is the server process (None if unknown); `started` if this call started it."""

    url: str
    pid: int | None
    served_model: str
    registry_version: str | None
    model_dir: str
    engine: str
    started: bool
    log_path: Path | None = None
    reused_engine: bool = False  # a LoRA adapter added to the running engine: the base was not reloaded


def serve_python() -> Path:
    """The serving env's interpreter (see `serve_env.find_serve_python`); `DeployError` saying how to get one if none."""
    try:
        python = find_serve_python()
    except FileNotFoundError as e:
        raise DeployError(str(e)) from None
    if python is None:
        raise DeployError(f"no serving-env python in {repo_root() / '.venv-serve'}; create the serving env (`make setup`) or set "
                          f"{SERVE_PYTHON_ENV} to its python")
    return python


def resolve_engine(engine: str, python: Path | str) -> str:
    """"auto" -> "vllm" when the serving python can import vLLM, else "transformers"; other values pass through."""
    if engine != "auto":
        return engine
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    return "vllm" if subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0 else "transformers"


def server_command(python: Path | str, model_dir: Path | str, host: str, port: int, *, engine: str = "vllm",
                   served_name: str | None = None, registry_version: str | None = None, model_type: str | None = None,
                   log_file: Path | str | None = None, extra_args: tuple[str, ...] = ()) -> list[str]:
    cmd = [str(python), "-m", "openchat_core.serving", "--model", str(model_dir), "--host", host, "--port", str(port),
           "--engine", engine]
    for flag, value in (("--served-name", served_name), ("--registry-version", registry_version),
                        ("--model-type", model_type), ("--log-file", log_file)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(extra_args)


def server_env(api_keys: list[str], admin_key: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """`checkout_env` with exactly the given keys (and no inherited ones) in the key variables."""
    env = checkout_env(base)
    env.pop(API_KEYS_ENV, None)
    env.pop(ADMIN_KEY_ENV, None)
    if api_keys:
        env[API_KEYS_ENV] = ",".join(api_keys)
    if admin_key:
        env[ADMIN_KEY_ENV] = admin_key
    return env


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


def admin_status(url: str, admin_key: str | None, timeout: float = 10.0) -> dict | None:
    """`GET /admin/status` (pid, live model, draining models), or None when nothing answers or the key is refused."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/admin/status", headers=_headers(admin_key), timeout=timeout)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def is_alive(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(url: str, api_key: str | None, timeout_s: float, process: subprocess.Popen | None = None,
               log_path: Path | None = None) -> dict:
    """Poll /ready until 200; fail fast if the server process exits."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DeployError(f"the server exited with code {process.returncode} before it was ready; log tail:\n"
                              f"{_log_tail(log_path)}")
        try:
            response = httpx.get(f"{url}/ready", headers=_headers(api_key), timeout=5)
            if response.status_code == 200:
                return response.json()
            last = f"{response.status_code}: {_error_text(response)}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise DeployError(f"{url} was not ready after {timeout_s:g} s (last: {last})")


def _post_or_raise(url: str, key: str | None, body: dict, timeout_s: float, what: str) -> dict:
    """POST JSON and return the response JSON; any transport error or non-200 answer becomes a `DeployError` naming `what`."""
    try:
        response = httpx.post(url, headers=_headers(key), json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DeployError(f"{what} request failed: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise DeployError(f"{what} answered {response.status_code}: {_error_text(response)}")
    return response.json()


def smoke_completion(url: str, api_key: str | None, model: str, prompt: str = "Hello", max_tokens: int = 4,
                     timeout_s: float = 120) -> dict:
    """One greedy chat completion through the public API; returns the response JSON."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}
    data = _post_or_raise(f"{url}/v1/chat/completions", api_key, body, timeout_s, "smoke completion")
    if data["usage"]["completion_tokens"] < 1 or data["choices"][0]["finish_reason"] not in ("stop", "length"):
        raise DeployError(f"smoke completion produced no finished output: {data}")
    return data


def stop_server(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM the server (uvicorn shuts its engines down cleanly), then SIGKILL whatever is left of its group.

    Only the server gets SIGTERM first: signalling the whole group at once would kill vLLM's
    engine-core processes under the server's feet. The group kill afterwards catches leftovers.
    """
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                break
        except ChildProcessError:  # not our child: poll for existence instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
        time.sleep(0.2)
    if pgid != os.getpgid(0):  # never our own group
        try:
            os.killpg(pgid, signal.SIGKILL)  # the group: vLLM's engine-core processes too
        except ProcessLookupError:
            pass


def _start_server(url: str, model_dir: Path, *, api_keys: list[str], admin_key: str | None, engine: str,
                  served_name: str | None, registry_version: str | None, model_type: str | None,
                  python: Path | None, log_path: Path | None, request_log: Path | None,
                  extra_args: tuple[str, ...]) -> tuple[subprocess.Popen, Path, str]:
    """Start the server process in its own group; the caller waits for it to be ready (and stops it if it is not)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    python = python or serve_python()
    engine = resolve_engine(engine, python)
    log_path = log_path or Path(tempfile.gettempdir()) / f"openchat-serve-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = server_command(python, model_dir, host, port, engine=engine, served_name=served_name,
                         registry_version=registry_version, model_type=model_type, log_file=request_log,
                         extra_args=extra_args)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=server_env(api_keys, admin_key), cwd=str(repo_root()), start_new_session=True)
    return process, log_path, engine


def deploy_model(url: str, admin_key: str | None, model_dir: Path | str, *, served_name: str | None = None,
                 registry_version: str | None = None, model_type: str | None = None, api_key: str | None = None,
                 api_keys: list[str] | None = None, engine: str = "vllm", start_if_down: bool = True,
                 python: Path | str | None = None, log_path: Path | str | None = None,
                 request_log: Path | str | None = None, extra_args: tuple[str, ...] = (),
                 ready_timeout_s: float = 600.0, smoke_prompt: str = "Hello") -> ServerHandle:
    """Serve `model_dir` at `url` (start or switch), verify it with a smoke completion, return where it runs.

    `api_key` is the key this helper uses for /ready and the smoke completion; `api_keys` (default:
    `[api_key]`) are the keys a newly started server accepts. `engine` may be "auto" (vLLM if the
    serving env has it, else transformers). `extra_args` go to a new server's
    command line (e.g. `("--max-model-len", "2048")`). Raises `DeployError` with the reason.
    """
    url = url.rstrip("/")
    model_path = Path(model_dir).expanduser().resolve()
    keys = list(api_keys) if api_keys is not None else ([api_key] if api_key else [])
    probe_key = api_key or (keys[0] if keys else None)
    if is_alive(url):
        if not admin_key:
            raise DeployError(f"a server is already running at {url}; switching it needs its admin key")
        body = {"model": str(model_path), "served_name": served_name, "registry_version": registry_version,
                "model_type": model_type}
        switched = _post_or_raise(f"{url}/admin/load", admin_key, body, ready_timeout_s, "model switch")
        live, reused = switched["model"], bool(switched.get("reused_engine"))
        pid = (admin_status(url, admin_key) or {}).get("pid")
        process, started, log = None, False, None
    elif start_if_down:
        process, log, engine = _start_server(
            url, model_path, api_keys=keys, admin_key=admin_key, engine=engine, served_name=served_name,
            registry_version=registry_version, model_type=model_type, python=Path(python) if python else None,
            log_path=Path(log_path) if log_path else None, request_log=Path(request_log) if request_log else None,
            extra_args=extra_args)
        pid, started = process.pid, True
        live, reused = None, False
    else:
        raise DeployError(f"no server answers at {url} and start_if_down is False")

    try:
        ready = wait_ready(url, probe_key, ready_timeout_s, process, log)
        served = live["served_name"] if live else ready["model"]
        answer = smoke_completion(url, probe_key, served, smoke_prompt)
        expected = f"{served}@{registry_version}" if registry_version else served
        if answer.get("system_fingerprint") != expected:
            raise DeployError(f"the smoke completion came from {answer.get('system_fingerprint')}, not {expected}")
    except BaseException:
        if started and pid is not None:
            stop_server(pid)
        raise
    return ServerHandle(url=url, pid=pid, served_model=served, registry_version=registry_version,
                        model_dir=str(model_path), engine=live["engine"] if live else engine, started=started,
                        log_path=log, reused_engine=reused)
