"""Model switch without downtime (POST /admin/load), on fake engines, driven with concurrent async clients."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from openchat_core.serving.app import build_app
from openchat_core.serving.settings import ServeSettings
from tests.unit.serving_fakes import FakeEngineFactory, make_tokenizer_checkpoint

KEY, ADMIN = "sk-client", "adm-operator"
AUTH, ADMIN_AUTH = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def models(tmp_path_factory, mistral_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: make_tokenizer_checkpoint(root / name, mistral_tokenizer) for name in ("old", "new", "broken", "mute")}


def run(coro):
    return asyncio.run(coro)


class Server:
    """The app with its lifespan running, and an async client on it (no sockets)."""

    def __init__(self, models: dict[str, Path], factory: FakeEngineFactory, **overrides: Any) -> None:
        settings = ServeSettings(model=models["old"], served_name="chat", registry_version="1", api_keys=[KEY],
                                 admin_key=ADMIN, **overrides)
        self.app = build_app(settings, engine_factory=factory)
        self.factory = factory

    async def __aenter__(self) -> httpx.AsyncClient:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test", timeout=30)
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self._lifespan.__aexit__(None, None, None)


async def chat(client: httpx.AsyncClient, **extra: Any) -> httpx.Response:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, **extra}
    return await client.post("/v1/chat/completions", headers=AUTH, json=body)


async def load(client: httpx.AsyncClient, model: Path, version: str, headers: dict[str, str] = ADMIN_AUTH) -> httpx.Response:
    return await client.post("/admin/load", headers=headers, json={"model": str(model), "registry_version": version})


def test_switch_serves_new_requests_on_the_new_model_and_drains_the_old(models):
    long_reply = " ".join(["word"] * 40)
    factory = FakeEngineFactory(per_model={"old": {"delay": 0.02, "reply": long_reply}})

    async def scenario() -> None:
        async with Server(models, factory) as client:
            old = factory.for_model("old")[0]
            slow = asyncio.create_task(chat(client))  # 40 tokens x 20 ms on the old engine
            while not [c for c in old.calls if not c.request_id.startswith("smoke-")]:
                await asyncio.sleep(0.005)
            response = await load(client, models["new"], "2")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"]["registry_version"] == "2" and body["model"]["served_name"] == "chat"
            assert body["previous"]["registry_version"] == "1"
            assert body["smoke"]["tokens"] >= 1 and body["smoke"]["finish_reason"] in ("stop", "length")
            after = await chat(client)
            assert after.json()["system_fingerprint"] == "chat@2"
            assert not old.shut_down  # the slow request is still running on it
            finished = await slow
            assert finished.status_code == 200
            assert finished.json()["system_fingerprint"] == "chat@1"  # finished on the engine it started on
            assert finished.json()["choices"][0]["message"]["content"] == long_reply
            for _ in range(200):
                if old.shut_down:
                    break
                await asyncio.sleep(0.01)
            assert old.shut_down  # drained, then shut down
            status = (await client.get("/admin/status", headers=ADMIN_AUTH)).json()
            assert status["model"]["registry_version"] == "2" and status["draining"] == [] and not status["switching"]
            models_list = (await client.get("/v1/models", headers=AUTH)).json()["data"]
            assert {m["registry_version"] for m in models_list} == {"2"}
            metrics = (await client.get("/metrics", headers=AUTH)).text
            assert 'openchat_model_switches_total{result="ok"} 1.0' in metrics
            assert 'registry_version="2"' in metrics and 'registry_version="1"' not in metrics
        assert factory.for_model("new")[0].shut_down  # lifespan exit stops the live engine too

    run(scenario())


def test_no_request_fails_while_switching_under_load(models):
    factory = FakeEngineFactory(default={"delay": 0.002})

    async def scenario() -> None:
        async with Server(models, factory) as client:
            stop = asyncio.Event()
            results: list[tuple[int, str | None]] = []

            async def loop(stream: bool) -> None:
                while not stop.is_set():
                    response = await chat(client, max_tokens=8, stream=stream)
                    fingerprint = None
                    if response.status_code == 200:
                        if stream:
                            events = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]
                            assert events[-1] == "[DONE]" and "error" not in events[-2]
                            fingerprint = json.loads(events[0])["system_fingerprint"]
                        else:
                            fingerprint = response.json()["system_fingerprint"]
                    results.append((response.status_code, fingerprint))

            loops = [asyncio.create_task(loop(stream=i % 2 == 1)) for i in range(4)]
            await asyncio.sleep(0.2)
            for version, name in (("2", "new"), ("3", "old"), ("4", "new")):
                assert (await load(client, models[name], version)).status_code == 200
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*loops)
            assert results and all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
            seen = {fp for _, fp in results}
            assert {"chat@1", "chat@4"} <= seen
            assert results[-1][1] == "chat@4"

    run(scenario())


@pytest.mark.parametrize(("failure", "stage"), [
    ({"fail_start": RuntimeError("corrupt safetensors header")}, "load"),
    ({"silent": True, "fail_smoke": True}, "smoke"),
    ({"fail_generate": RuntimeError("kernel missing"), "fail_smoke": True}, "smoke"),
])
def test_a_broken_candidate_is_not_promoted_and_the_old_model_keeps_serving(models, failure, stage):
    factory = FakeEngineFactory(per_model={"broken": failure})

    async def scenario() -> None:
        async with Server(models, factory) as client:
            response = await load(client, models["broken"], "2")
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["code"] == f"{stage}_failed"
            assert "Still serving chat@1" in error["message"]
            assert ("corrupt safetensors" in error["message"]) is ("fail_start" in failure)
            assert (await chat(client)).json()["system_fingerprint"] == "chat@1"
            assert (await client.get("/ready", headers=AUTH)).status_code == 200
            broken = factory.for_model("broken")
            assert len(broken) == 1 and (broken[0].shut_down or not broken[0].started)
            assert not factory.for_model("old")[0].shut_down
            metrics = (await client.get("/metrics", headers=AUTH)).text
            assert f'openchat_model_switches_total{{result="{stage}_failed"}} 1.0' in metrics

    run(scenario())


def test_admin_routes_need_the_admin_key(models):
    factory = FakeEngineFactory()

    async def scenario() -> None:
        async with Server(models, factory) as client:
            assert (await load(client, models["new"], "2", headers={})).status_code == 401
            assert (await load(client, models["new"], "2", headers=AUTH)).status_code == 401  # client key: no
            assert (await client.get("/v1/models", headers=ADMIN_AUTH)).status_code == 401  # admin key is not an API key
            assert (await client.get("/admin/status", headers=ADMIN_AUTH)).status_code == 200
            missing = await load(client, models["old"].parent / "nope", "2")
            assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
            bad_body = await client.post("/admin/load", headers=ADMIN_AUTH, json={"model": str(models["new"]), "x": 1})
            assert bad_body.status_code == 400
            assert len(factory.engines) == 1  # nothing was loaded

    run(scenario())


def test_admin_routes_are_off_without_an_admin_key(models):
    async def scenario() -> None:
        settings = ServeSettings(model=models["old"], api_keys=[KEY])
        app = build_app(settings, engine_factory=FakeEngineFactory())
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                response = await client.post("/admin/load", headers=AUTH, json={"model": str(models["new"])})
                assert response.status_code == 404 and response.json()["error"]["code"] == "admin_disabled"

    run(scenario())


def test_only_one_switch_at_a_time(models):
    factory = FakeEngineFactory(per_model={"new": {"delay": 0.05}})  # smoke test takes a while

    async def scenario() -> None:
        async with Server(models, factory) as client:
            first = asyncio.create_task(load(client, models["new"], "2"))
            while not factory.for_model("new"):
                await asyncio.sleep(0.005)
            second = await load(client, models["mute"], "3")
            assert second.status_code == 409 and second.json()["error"]["code"] == "switch_in_progress"
            assert (await first).status_code == 200

    run(scenario())


@pytest.mark.parametrize("bad_path", ["~no_such_user_xyz/model", "a\x00b", "", "/" + "x" * 5000])
def test_unusable_paths_are_400_not_500(models, bad_path):
    # "~unknownuser" made Path.expanduser raise RuntimeError (found by the schemathesis fuzz test)
    async def scenario() -> None:
        async with Server(models, FakeEngineFactory()) as client:
            response = await client.post("/admin/load", headers=ADMIN_AUTH, json={"model": bad_path})
            assert response.status_code == 400, response.text

    run(scenario())


def test_corrupt_or_truncated_weights_are_named_in_the_error(models, tmp_path):
    import shutil

    from openchat_core.serving.runtime import ModelLoadError, check_safetensors

    good = tmp_path / "good"
    shutil.copytree(models["old"], good)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (good / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    check_safetensors(good)
    (good / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))  # truncated
    with pytest.raises(ModelLoadError, match="ends past the end of the file"):
        check_safetensors(good)
    (good / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="not a valid safetensors file"):
        check_safetensors(good)
    (good / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        check_safetensors(good)
