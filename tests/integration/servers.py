"""Real services for integration tests, started on loopback: an MLflow tracking server, and a proxy that can refuse calls.

The proxy stands between a client and a real server and answers chosen API paths with an error of
our choosing, so a test sees exactly what MLflow's client does with a server-side failure (no
mock of the client).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from openchat_core.telemetry import without_telemetry
from openchat_core.ports import free_port


def wait_http(url: str, what: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering at {url}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout_s:.0f} s")


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """`mlflow server` on a sqlite store in `folder`; yields its URL."""
    port = free_port()
    log = (folder / "mlflow-server.log").open("wb")
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=without_telemetry(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", "mlflow server", proc=proc)
        yield url
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM to the process group a service was started in (servers fork workers), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue


class FaultProxy:
    """A loopback HTTP proxy to `upstream`; `refuse(path_part, status, error_code)` makes matching calls fail."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.rules: dict[str, tuple[int, str]] = {}
        self.refused: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rule = next((r for part, r in proxy.rules.items() if part in self.path), None)
                if rule is not None:
                    proxy.refused.append(self.path)
                    payload = json.dumps({"error_code": rule[1], "message": f"refused by the test proxy ({rule[1]})"}).encode()
                    self._reply(rule[0], payload, {"Content-Type": "application/json"})
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self._reply(resp.status, data, {k: v for k, v in resp.getheaders()
                                                if k.lower() not in ("transfer-encoding", "connection", "content-length")})
                conn.close()

            def _reply(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def refuse(self, path_part: str, status: int, error_code: str) -> None:
        self.rules[path_part] = (status, error_code)

    def clear(self) -> None:
        self.rules.clear()

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
