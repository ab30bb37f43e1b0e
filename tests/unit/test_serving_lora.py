"""LoRA serving on one base (the vLLM path), on fake engines: adapters chosen by `model`, start-up checks, and a deploy
of an adapter onto the served base that adds only the adapter. The real vLLM runs in tests/integration/test_serving_lora.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from openchat_core.serving.runtime import ModelLoadError
from openchat_core.serving.settings import ServeSettings
from tests.unit.serving_fakes import REPLY, FakeEngineFactory, make_adapter_checkpoint, make_tokenizer_checkpoint
from tests.unit.test_serving_switch import ADMIN_AUTH, AUTH, Server, chat, load, run


@pytest.fixture(scope="module")
def models(tmp_path_factory, mistral_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-models")
    base = make_tokenizer_checkpoint(root / "base", mistral_tokenizer)
    other = make_tokenizer_checkpoint(root / "other-base", mistral_tokenizer)
    return {"base": base, "other": other,
            "a": make_adapter_checkpoint(root / "a", mistral_tokenizer, base, rank=4),
            "b": make_adapter_checkpoint(root / "b", mistral_tokenizer, base, rank=16),
            "foreign": make_adapter_checkpoint(root / "foreign", mistral_tokenizer, other, rank=8),
            "embeddings": make_adapter_checkpoint(root / "embeddings", mistral_tokenizer, base,
                                                  modules_to_save=["embed_tokens", "lm_head"])}


def served(models: dict[str, Path], model: str, **overrides) -> Server:
    return Server({"old": models[model]}, FakeEngineFactory(), **overrides)


def test_adapters_are_listed_and_each_is_chosen_by_model(models):
    server = served(models, "base", lora=[f"a={models['a']}", f"b={models['b']}"])

    async def scenario() -> None:
        async with server as client:
            engine = server.factory.engines[0]
            assert engine.config.model_dir == models["base"] and engine.config.max_lora_rank == 16
            assert engine.config.max_loras == 3  # two adapters + room for a deployed one
            cards = {m["id"]: m for m in (await client.get("/v1/models", headers=AUTH)).json()["data"]}
            assert cards["a"]["parent"] == cards["b"]["parent"] == "chat" and cards["chat"]["parent"] is None
            assert list(cards)[-2:] == ["a", "b"]
            answers = await asyncio.gather(chat(client, model="a"), chat(client, model="b"), chat(client, model="chat"))
            bodies = [r.json() for r in answers]
            assert [b["choices"][0]["message"]["content"] for b in bodies] == ["from a", "from b", REPLY]
            assert [b["model"] for b in bodies] == ["a", "b", "chat"]
            sent = {c.options.adapter.name if c.options.adapter else None for c in engine.calls}
            assert sent == {"a", "b", None}
            missing = await chat(client, model="c")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
            assert "chat" in missing.json()["error"]["message"] and "b" in missing.json()["error"]["message"]

    run(scenario())


def test_an_adapter_checkpoint_is_served_on_its_base(models):
    server = served(models, "a")

    async def scenario() -> None:
        async with server as client:
            engine = server.factory.engines[0]
            assert engine.config.model_dir == models["base"]
            assert engine.calls[0].request_id.startswith("smoke-") and engine.calls[0].options.adapter.name == "chat"
            body = (await chat(client)).json()
            assert body["choices"][0]["message"]["content"] == "from chat" and body["model"] == "chat"
            status = (await client.get("/admin/status", headers=ADMIN_AUTH)).json()
            assert status["model"]["base_model"] == str(models["base"]) and status["engine_starts"] == 1

    run(scenario())


@pytest.mark.parametrize("value", ["a", "=x", "a=", "a=x a=y"])
def test_malformed_lora_values_name_the_option_and_value(models, value):
    values = value.split(" ")
    with pytest.raises(ValidationError, match=r"--lora '[^']*': (expected NAME=PATH|the name 'a' is given twice)"):
        ServeSettings(model=models["base"], lora=values)


@pytest.mark.parametrize(("model", "extra", "message"), [
    ("base", {"lora": ["x=FOREIGN"]}, r"--lora x=.*foreign: this adapter was trained on .*other-base, but the served base is .*base"),
    ("base", {"lora": ["e=EMBEDDINGS"]}, r"--lora e=.*modules_to_save.*registry.merge_adapter: true.*--engine transformers"),
    ("embeddings", {}, r"--model .*embeddings: .*embed_tokens, lm_head.*registry.merge_adapter: true"),
    ("base", {"lora": ["a=A"], "engine": "transformers"}, r"--lora a=.*need --engine vllm"),
    ("base", {"lora": ["a=/nowhere"]}, r"--lora a=/nowhere: .*not a LoRA adapter checkpoint"),
])
def test_adapters_vllm_cannot_serve_stop_the_start_with_a_clear_reason(models, model, extra, message):
    if "lora" in extra:
        extra = {**extra, "lora": [v.replace("FOREIGN", str(models["foreign"])).replace("EMBEDDINGS", str(models["embeddings"]))
                                   .replace("=A", f"={models['a']}") for v in extra["lora"]]}
    server = served(models, model, **extra)

    async def start() -> None:
        async with server:
            pass

    with pytest.raises(ModelLoadError, match=message):
        run(start())
    assert all(e.shut_down for e in server.factory.engines)


def test_deploying_an_adapter_onto_the_served_base_loads_only_the_adapter(models):
    server = served(models, "a", lora=[f"b={models['b']}"], max_lora_rank=16)

    async def scenario() -> None:
        async with server as client:
            engine = server.factory.engines[0]
            before = (await client.get("/admin/status", headers=ADMIN_AUTH)).json()["model"]
            stop = asyncio.Event()

            async def traffic() -> list[int]:
                codes = []
                while not stop.is_set():
                    codes.append((await chat(client)).status_code)
                return codes

            load_task = asyncio.create_task(traffic())
            await asyncio.sleep(0.05)
            switched = await load(client, models["b"], "2")
            after_switch = await chat(client)
            stop.set()
            codes = await load_task
            assert switched.status_code == 200, switched.text
            body = switched.json()
            assert body["reused_engine"] and body["model"]["engine_id"] == before["engine_id"]
            assert len(server.factory.engines) == 1 and not engine.shut_down  # the base was not reloaded
            assert codes and set(codes) == {200}
            assert after_switch.json()["system_fingerprint"] == "chat@2"
            assert body["model"]["adapters"] == ["b"]  # the --lora adapters carry over
            for _ in range(200):  # the old runtime drains, then only its adapter is freed
                if engine.removed:
                    break
                await asyncio.sleep(0.01)
            assert [a.path for a in engine.removed] == [models["a"]] and not engine.shut_down
            status = (await client.get("/admin/status", headers=ADMIN_AUTH)).json()
            assert status["engine_starts"] == 1 and status["model"]["engine_id"] == before["engine_id"]

            foreign = await load(client, models["foreign"], "3")  # another base: the --lora adapters cannot follow it
            assert foreign.status_code == 422 and "--lora b=" in foreign.json()["error"]["message"]
            assert (await chat(client)).json()["system_fingerprint"] == "chat@2" and not engine.shut_down

    run(scenario())


def test_a_higher_rank_adapter_than_the_engine_accepts_is_loaded_anew(models):
    server = served(models, "a")  # max_lora_rank 4 from adapter a; b has rank 16

    async def scenario() -> None:
        async with server as client:
            response = await load(client, models["b"], "2")
            assert response.status_code == 200 and not response.json()["reused_engine"]
            assert len(server.factory.engines) == 2 and server.factory.engines[1].config.max_lora_rank == 16
            for _ in range(200):
                if server.factory.engines[0].shut_down:
                    break
                await asyncio.sleep(0.01)
            assert server.factory.engines[0].shut_down  # a full load: the old engine is drained and stopped
            status = (await client.get("/admin/status", headers=ADMIN_AUTH)).json()
            assert status["engine_starts"] == 2

    run(scenario())


def test_transformers_engine_rejects_a_per_request_adapter():
    from openchat_core.serving.engines.base import EngineConfig, EngineRequestError, LoraAdapter, SamplingOptions
    from openchat_core.serving.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(EngineConfig(model_dir=Path("."), max_model_len=64))
    engine._ready = True
    options = SamplingOptions(max_tokens=1, stop_token_ids=(2,), adapter=LoraAdapter("a", Path("."), 1, 8))

    async def first() -> None:
        async for _ in engine.generate("r", [1], options):
            pass

    with pytest.raises(EngineRequestError, match="needs the vllm engine"):
        run(first())


def test_max_lora_rank_is_rounded_up_to_a_rank_vllm_accepts():
    from openchat_core.models.adapters import round_up_rank

    accepted = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks (the engine reads it from vLLM)
    assert [round_up_rank(r, accepted) for r in (1, 4, 8, 9, 300)] == [1, 8, 8, 16, 320]
    with pytest.raises(ValueError, match="rank 600 is above the largest rank this engine supports \\(512\\)"):
        round_up_rank(600, accepted)
