"""vLLM serving LoRA adapters on one base, started as the README says (`openchat serve --model BASE --lora a=A --lora b=B`),
driven by the official `openai` client; then a deploy of an adapter champion that adds only the adapter.

First `openchat serve --model <adapter checkpoint>` alone, then one server for the rest of the module
(vLLM start-up ~25 s on CPU each; the module takes about a minute). Each adapter must answer exactly what peft
answers for it (greedy, float32), and the three answers (base, a, b) must differ, so the right
adapter is proven to have answered. Needs the serving env with vLLM; skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from openchat_core.ports import free_port  # noqa: E402
from openchat_core.serving.deploy import stop_server, wait_ready  # noqa: E402
from tests.integration.lora_models import build_lora_models  # noqa: E402
from tests.integration.test_serving_vllm import _serve_python  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY, ADMIN = "sk-lora", "adm-lora"
USER = [{"role": "user", "content": "What is C-RLFT?"}]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    if _serve_python() is None:
        pytest.skip("no serving env with vLLM (set OPENCHAT_SERVE_PYTHON)")
    return build_lora_models(tmp_path_factory.mktemp("lora-serving"))


@pytest.fixture(scope="module")
def expected(models) -> dict[str, str]:
    """peft's greedy chat answer per model, as the chat API returns it (text before the EOT, first space stripped)."""
    from openchat_core.evaluation.generators import make_generator
    from openchat_core.templates.conversation import ConversationTemplate
    from openchat_core.templates.tokenizers import load_tokenizer

    prompt = ConversationTemplate.from_tokenizer("openchat_3.5", load_tokenizer(models["base"])).prompt_ids(USER)
    out = {}
    for name in ("base", "a", "b"):
        (generation,) = make_generator("transformers", models[name]).generate([prompt], MAX_TOKENS)
        out[name] = generation.text.removeprefix(" ")
    assert len(set(out.values())) == 3, out  # the adapters visibly change the answer
    return out


@contextmanager
def openchat_serve(args: list[str], log: Path) -> Iterator[str]:
    """`openchat serve ARGS` (the README's command) on a free port, float32 (to compare with peft), a short context."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "openchat"), "serve", *args, "--port", str(port), "--engine", "vllm",
           "--dtype", "float32", "--max-model-len", "512"]
    env = {**os.environ, "OPENCHAT_API_KEYS": KEY, "OPENCHAT_ADMIN_KEY": ADMIN}
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, KEY, 240, process, log)
        yield url
    finally:
        stop_server(process.pid)


@pytest.fixture(scope="module")
def server(models, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("lora-serving-logs") / "server.log"
    with openchat_serve(["--model", str(models["base"]), "--served-name", "tiny",
                         "--lora", f"a={models['a']}", "--lora", f"b={models['b']}"], log) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def _answer(client: openai.OpenAI, model: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=model, messages=USER, max_tokens=MAX_TOKENS, temperature=0)


def test_an_adapter_checkpoint_is_served_on_its_base(models, expected, tmp_path):
    """`openchat serve --model <adapter checkpoint>`: vLLM loads the base from openchat.json and applies the adapter.
    (First in the file, so it runs before the module's server starts.)"""
    with openchat_serve(["--model", str(models["a"])], tmp_path / "server.log") as url:
        local = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
        assert _answer(local, "openchat_3.5").choices[0].message.content == expected["a"]
        status = httpx.get(f"{url}/admin/status", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert status["model"]["base_model"] == str(models["base"]) and status["model"]["model_dir"] == str(models["a"])


def test_models_list_shows_the_base_and_each_adapter(client):
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert {"tiny", "a", "b"} <= set(cards)
    assert cards["a"]["parent"] == cards["b"]["parent"] == "tiny" and cards["tiny"]["parent"] is None


def test_two_adapters_at_once_each_chosen_by_model(client, expected):
    results: dict[str, openai.types.chat.ChatCompletion] = {}
    threads = [threading.Thread(target=lambda m=m: results.__setitem__(m, _answer(client, m))) for m in ("a", "b", "tiny")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert {m: r.choices[0].message.content for m, r in results.items()} == {
        "a": expected["a"], "b": expected["b"], "tiny": expected["base"]}
    assert {m: r.model for m, r in results.items()} == {"a": "a", "b": "b", "tiny": "tiny"}


def test_unknown_model_is_the_openai_404(client):
    with pytest.raises(openai.NotFoundError) as error:
        _answer(client, "c")
    assert error.value.body["code"] == "model_not_found"


def test_deploying_an_adapter_champion_on_the_served_base_loads_only_the_adapter(server, client, models, expected,
                                                                                  tmp_path):
    """The deploy flow's own step (`deploy_registered`: resolve models:/tiny@champion in a real MLflow registry, switch
    the running server), under continuous traffic."""
    from openchat_core.registry.adapters import registrable
    from openchat_core.registry.deployment import ADMIN_KEY_FILE, deploy_registered
    from openchat_core.registry.store import ModelRegistry

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    registry = ModelRegistry(uri, "tiny")  # the registered name is the served name, as in the pipeline
    target = registrable(models["a"])
    version = registry.register(target.checkpoint, None, target.tags).version
    registry.set_alias("champion", version)
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / ADMIN_KEY_FILE).write_text(ADMIN + "\n")

    def status() -> dict:
        return httpx.get(f"{server}/admin/status", headers={"Authorization": f"Bearer {ADMIN}"}).json()

    before = status()
    stop = threading.Event()
    answers: list[str] = []
    failures: list[str] = []

    def traffic() -> None:
        while not stop.is_set():
            try:
                answers.append(_answer(client, "tiny").choices[0].message.content)
            except Exception as exc:  # any failure counts
                failures.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    time.sleep(0.5)
    started = time.perf_counter()
    record = deploy_registered(uri, "tiny", url=server, state_dir=tmp_path / "serving", api_keys=[KEY])
    switch_s = time.perf_counter() - started
    time.sleep(0.5)
    stop.set()
    thread.join(timeout=120)
    after = status()
    assert not failures, failures[:3]
    assert record["reused_engine"] and not record["started_server"] and record["registry_version"] == version
    assert after["engine_starts"] == before["engine_starts"] == 1  # the base was loaded once, at start-up
    assert after["model"]["engine_id"] == before["model"]["engine_id"] and after["pid"] == before["pid"]
    assert answers[0] == expected["base"] and answers[-1] == expected["a"]  # the served name now answers with the adapter
    assert _answer(client, "b").choices[0].message.content == expected["b"]  # the --lora adapters still answer
    print(f"adapter deploy took {switch_s:.1f} s")

