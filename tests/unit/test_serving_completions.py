"""/v1/completions, chat logprobs, response_format, /tokenize and /detokenize on the fake engine (see serving_fakes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.serving_fakes import REPLY, FakeEngineFactory, fake_logprob, make_tokenizer_checkpoint
from tests.unit.test_serving_app import AUTH, KEY, USER, assert_error, chat, last_call, make_client, sse_events

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, mistral_tokenizer) -> Path:
    return make_tokenizer_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", mistral_tokenizer, max_positions=256)


@pytest.fixture(scope="module")
def served(checkpoint):
    client, factory = make_client(checkpoint, served_name="tiny")
    with client:
        yield client, factory


def complete(client, **body):
    body.setdefault("model", "tiny")
    return client.post("/v1/completions", headers=AUTH, json=body)


def test_text_prompt_is_tokenized_raw_with_bos_and_continued(served, mistral_tokenizer):
    client, factory = served
    response = complete(client, prompt="The capital of France is", max_tokens=3, temperature=0)
    assert response.status_code == 200, response.text
    body = response.json()
    expected_ids = mistral_tokenizer("The capital of France is")["input_ids"]
    call = last_call(factory)
    assert call.prompt_ids == expected_ids and expected_ids[0] == mistral_tokenizer.bos_token_id  # no chat template
    assert call.options.max_tokens == 3 and call.options.temperature == 0
    choice = body["choices"][0]
    assert body["object"] == "text_completion" and choice["finish_reason"] == "length"
    assert choice["text"] == " Hello there,"  # the raw continuation: no first-space strip on this route
    assert body["usage"] == {"prompt_tokens": len(expected_ids), "completion_tokens": 3,
                             "total_tokens": len(expected_ids) + 3}


def test_loglikelihood_request_as_lm_eval_sends_it(served, mistral_tokenizer):
    """Token-id prompts in a batch, echo + logprobs 1 + max_tokens 1: every prompt token scored but the first."""
    client, factory = served
    prompts = [[1, 22557, 1526, 28723], [1, 415, 5565]]
    response = complete(client, prompt=prompts, echo=True, logprobs=1, max_tokens=1, temperature=0, seed=1234)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    first_reply_token = mistral_tokenizer(REPLY, add_special_tokens=False)["input_ids"][0]
    for choice, prompt in zip(choices, prompts):
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(prompt) + 1
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        expected = [fake_logprob(i, t, 1).logprob for i, t in enumerate(prompt[1:], start=1)]
        assert lp["token_logprobs"][1:-1] == pytest.approx(expected)
        assert lp["token_logprobs"][-1] == pytest.approx(fake_logprob(len(prompt), first_reply_token, 1).logprob)
        assert all(max(top.values()) == own for top, own in zip(lp["top_logprobs"][1:], lp["token_logprobs"][1:]))
        assert choice["text"].startswith(mistral_tokenizer.decode(prompt))
        assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    options = [c.options for c in factory.engines[-1].calls[-2:]]
    assert all(o.logprobs == 1 and o.prompt_logprobs == 1 for o in options)


def test_max_tokens_zero_with_echo_scores_the_prompt_only(served, mistral_tokenizer):
    client, _ = served
    prompt = [1, 22557, 1526]
    body = complete(client, prompt=prompt, echo=True, logprobs=0, max_tokens=0).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"]["token_logprobs"] == pytest.approx([None, -0.6, -0.7])
    assert choice["text"] == mistral_tokenizer.decode(prompt)  # the prompt alone, the engine's one token dropped
    assert body["usage"]["completion_tokens"] == 0


def test_several_prompts_with_several_choices_are_numbered_prompt_major(served):
    client, factory = served
    body = complete(client, prompt=["one", "two"], n=2, temperature=0.8, top_p=0.5, seed=7, stop=["friend"],
                    max_tokens=10).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["text"].rstrip().endswith("there,") and c["finish_reason"] == "stop" for c in body["choices"])
    options = last_call(factory).options
    assert (options.n, options.temperature, options.top_p, options.seed, options.stop) == (2, 0.8, 0.5, 7, ("friend",))


def test_stream_echoes_once_then_streams_and_ends_with_done(served, mistral_tokenizer):
    client, _ = served
    events = sse_events(complete(client, prompt="Hi", echo=True, max_tokens=4, stream=True, logprobs=2,
                                 stream_options={"include_usage": True}).text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    texts = [c["choices"][0]["text"] for c in chunks[:-1]]
    assert texts[0].startswith("Hi") and "".join(texts).count("Hi") == 1
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    scored = [t for c in chunks[:-1] for t in c["choices"][0]["logprobs"]["token_logprobs"]]
    assert len(scored) == len(mistral_tokenizer("Hi")["input_ids"]) + 4 and scored[0] is None


@pytest.mark.parametrize(("body", "param", "contains"), [
    ({"prompt": []}, "prompt", "empty"),
    ({"prompt": [[]]}, "prompt", "must not be empty"),
    ({"prompt": [-1]}, "prompt", ">= 0"),
    ({"prompt": [[1, 2], [1, 10**6]]}, "prompt", "prompt 1 has token id(s) outside the vocabulary"),
    ({"prompt": ["x"] * 65}, "prompt", "at most 64"),
    ({"prompt": "x", "max_tokens": 0}, None, "only makes sense with echo"),
    ({"prompt": "x", "logprobs": 21}, "logprobs", ""),
    ({"prompt": "x", "suffix": "y"}, "suffix", "not supported"),
    ({"prompt": "x", "n": 2, "temperature": 0}, None, "n > 1 needs temperature > 0"),
    ({"prompt": "x" * 2000}, "prompt", "maximum context length is 256"),
    ({"prompt": [5] * 256, "echo": True, "max_tokens": 0}, "prompt", "one free position"),
])
def test_bad_completion_requests_are_400(served, body, param, contains):
    client, _ = served
    error = assert_error(complete(client, **body), 400, contains=contains)
    if param is not None:
        assert error["param"] == param


def test_unknown_model_is_404_and_every_new_route_needs_the_key(served):
    client, _ = served
    assert_error(complete(client, model="nope", prompt="x"), 404, code="model_not_found")
    for method, path in (("post", "/v1/completions"), ("post", "/tokenize"), ("post", "/detokenize"),
                         ("get", "/tokenizer_info")):
        assert_error(client.request(method, path, json={} if method == "post" else None), 401)


def test_chat_logprobs_in_openai_shape(served, mistral_tokenizer):
    client, _ = served
    body = chat(client, logprobs=True, top_logprobs=2, max_tokens=3).json()
    content = body["choices"][0]["logprobs"]["content"]
    reply_ids = mistral_tokenizer(REPLY, add_special_tokens=False)["input_ids"][:3]
    assert [c["token"] for c in content] == [mistral_tokenizer.decode([t]) for t in reply_ids]
    assert all(len(c["top_logprobs"]) == 2 and c["top_logprobs"][0]["logprob"] == c["logprob"] for c in content)
    assert content[0]["bytes"] == list(content[0]["token"].encode())
    assert chat(client, max_tokens=3).json()["choices"][0]["logprobs"] is None
    events = [json.loads(e) for e in sse_events(chat(client, logprobs=True, max_tokens=3, stream=True).text)[:-1]]
    streamed = [t for e in events for c in e["choices"] if c["logprobs"] for t in c["logprobs"]["content"]]
    assert [t["logprob"] for t in streamed] == [c["logprob"] for c in content]


def test_response_format_reaches_the_engine_as_a_constraint(served):
    client, factory = served
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
    assert chat(client, response_format=fmt, max_tokens=3).status_code == 200
    structured = last_call(factory).options.structured
    assert (structured.kind, structured.schema) == ("json_schema", SCHEMA)
    assert complete(client, prompt="x", response_format={"type": "json_object"}, max_tokens=2).status_code == 200
    assert last_call(factory).options.structured.kind == "json_object"
    assert chat(client, response_format={"type": "text"}, max_tokens=2).status_code == 200
    assert last_call(factory).options.structured is None


def test_response_format_on_an_engine_without_it_names_the_vllm_engine(checkpoint):
    from fastapi.testclient import TestClient

    from openchat_core.serving.app import build_app
    from openchat_core.serving.settings import ServeSettings

    settings = ServeSettings(model=checkpoint, engine="transformers", api_keys=[KEY])
    with TestClient(build_app(settings, engine_factory=FakeEngineFactory(default={"structured": False}))) as client:
        error = assert_error(chat(client, model="openchat_3.5", response_format={"type": "json_object"}), 400,
                             param="response_format", code="unsupported_parameter")
        assert "needs the vllm engine" in error["message"] and "transformers engine" in error["message"]


def test_tokenize_text_and_messages_and_detokenize(served, mistral_tokenizer):
    from openchat_core.templates.conversation import ConversationTemplate

    client, _ = served
    text = client.post("/tokenize", headers=AUTH, json={"prompt": "Hello world", "add_special_tokens": False}).json()
    assert text["tokens"] == mistral_tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    assert text["count"] == len(text["tokens"]) and text["max_model_len"] == 256
    template = ConversationTemplate.from_tokenizer("openchat_3.5", mistral_tokenizer)
    rendered = client.post("/tokenize", headers=AUTH, json={"model": "tiny", "messages": USER}).json()
    assert rendered["tokens"] == template.prompt_ids(USER)  # what /v1/chat/completions sends the engine
    back = client.post("/detokenize", headers=AUTH, json={"tokens": text["tokens"]}).json()
    assert back == {"prompt": "Hello world"}
    assert_error(client.post("/detokenize", headers=AUTH, json={"tokens": [10**9]}), 400, param="tokens")
    assert_error(client.post("/tokenize", headers=AUTH, json={"prompt": "x", "messages": USER}), 400,
                 contains="exactly one")
    info = client.get("/tokenizer_info", headers=AUTH).json()
    assert (info["eos_token"], info["bos_token"], info["model_max_length"]) == ("</s>", "<s>", 256)


def test_metrics_count_completions(checkpoint):
    client, _ = make_client(checkpoint)
    with client:
        complete(client, model="openchat_3.5", prompt=[1, 2, 3], max_tokens=2)
        metrics = client.get("/metrics", headers=AUTH).text
    assert 'openchat_requests_total{route="/v1/completions",status="200"} 1.0' in metrics
    assert "openchat_prompt_tokens_total 3.0" in metrics
    assert "openchat_completion_tokens_total 2.0" in metrics
