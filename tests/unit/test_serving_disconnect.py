"""A client that disconnects aborts its generation (streaming and not), through a real uvicorn server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from openchat_core.serving.app import build_app
from openchat_core.serving.settings import ServeSettings
from tests.unit.serving_fakes import FakeEngine, FakeEngineFactory, make_tokenizer_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, mistral_tokenizer) -> Iterator[tuple[int, FakeEngine]]:
    checkpoint = make_tokenizer_checkpoint(tmp_path_factory.mktemp("dc") / "tiny", mistral_tokenizer)
    factory = FakeEngineFactory(default={"delay": 0.05, "reply": " ".join(["word"] * 400)})  # ~20 s if not aborted
    port = free_port()
    app = build_app(ServeSettings(model=checkpoint, port=port), engine_factory=factory)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "test server did not start"
        time.sleep(0.05)
    yield port, factory.engines[0]
    server.should_exit = True
    thread.join(timeout=10)


def send_and_hang_up(port: int, engine: FakeEngine, stream: bool) -> str:
    body = json.dumps({"model": "openchat_3.5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000,
                       "stream": stream}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    before = len(engine.calls)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        if stream:
            received = b""
            while b"data: " not in received:  # the stream has started (headers may come in their own packet)
                chunk = sock.recv(4096)
                assert chunk, "server closed the stream"
                received += chunk
        deadline = time.time() + 10
        while len(engine.calls) == before:
            assert time.time() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # a few tokens in
    return engine.calls[-1].request_id


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_aborts_the_generation(server, stream):
    port, engine = server
    request_id = send_and_hang_up(port, engine, stream)
    deadline = time.time() + 5
    while request_id not in engine.aborted:
        assert time.time() < deadline, f"{request_id} was not aborted"
        time.sleep(0.02)
    assert request_id not in engine.active
