"""The serving app end to end in-process, on the fake engine: routes, prompts, errors, auth, logs, metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openchat_core.serving.app import build_app
from openchat_core.serving.engines.base import EngineRequestError, EngineUnavailableError
from openchat_core.serving.protocol import ChatCompletionChunk, ChatCompletionResponse
from openchat_core.serving.settings import ServeSettings
from openchat_core.templates.conversation import ConversationTemplate
from tests.unit.serving_fakes import FakeEngineFactory, make_tokenizer_checkpoint

KEY = "sk-test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "What is C-RLFT?"}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, mistral_tokenizer) -> Path:
    return make_tokenizer_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", mistral_tokenizer)


@pytest.fixture(scope="module")
def template(mistral_tokenizer) -> ConversationTemplate:
    return ConversationTemplate.from_tokenizer("openchat_3.5", mistral_tokenizer)


def make_client(checkpoint: Path, factory: FakeEngineFactory | None = None,
                **overrides: Any) -> tuple[TestClient, FakeEngineFactory]:
    factory = factory or FakeEngineFactory()
    settings = ServeSettings(model=checkpoint, engine="vllm", api_keys=[KEY], **overrides)
    return TestClient(build_app(settings, engine_factory=factory)), factory


@pytest.fixture(scope="module")
def served(checkpoint):
    client, factory = make_client(checkpoint, served_name="tiny", registry_version="7")
    with client:
        yield client, factory


def chat(client: TestClient, **body: Any):
    body.setdefault("model", "tiny")
    body.setdefault("messages", USER)
    return client.post("/v1/chat/completions", headers=AUTH, json=body)


def last_call(factory: FakeEngineFactory):
    return factory.engines[-1].calls[-1]


def sse_events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]


def assert_error(response, status: int, *, code: str | None = None, param: str | None = None, contains: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    assert contains in error["message"]
    return error


# ---- auth ---------------------------------------------------------------------------------------


def test_health_is_open_but_every_other_route_needs_the_key(served):
    client, _ = served
    assert client.get("/health").json() == {"status": "ok"}
    for path in ("/v1/models", "/ready", "/metrics", "/openapi.json", "/no/such/route"):
        response = client.get(path)
        assert_error(response, 401, code="invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    assert_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(client.get("/v1/models", headers={"Authorization": KEY}), 401)  # no Bearer scheme
    assert_error(client.post("/v1/chat/completions", content=b"{not json"), 401)  # auth before parsing
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    assert_error(client.get("/no/such/route", headers=AUTH), 404)


def test_any_of_several_keys_is_accepted(checkpoint):
    factory = FakeEngineFactory()
    app = build_app(ServeSettings(model=checkpoint, api_keys=["sk-a", "sk-b"]), engine_factory=factory)
    with TestClient(app) as client:
        for key in ("sk-a", "sk-b"):
            assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "Bearer sk-c"}).status_code == 401


def test_without_api_keys_routes_are_open(checkpoint):
    app = build_app(ServeSettings(model=checkpoint), engine_factory=FakeEngineFactory())
    with TestClient(app) as client:
        assert client.get("/v1/models").status_code == 200


# ---- chat completions: prompts --------------------------------------------------------------------


def test_completion_shape_prompt_ids_and_stop_ids(served, template):
    client, factory = served
    response = chat(client, max_tokens=50)
    assert response.status_code == 200
    body = ChatCompletionResponse.model_validate(response.json())
    call = last_call(factory)
    assert call.prompt_ids == template.prompt_ids(USER)  # the training template, default condition
    assert set(call.options.stop_token_ids) == {32000, 2}  # EOT + checkpoint EOS
    assert body.model == "tiny" and body.system_fingerprint == "tiny@7"
    assert body.choices[0].message.content == "Hello there, friend"  # OpenChat's first space stripped
    assert body.choices[0].finish_reason == "stop"
    n_reply = len(factory.engines[-1].tokenizer.encode("Hello there, friend", add_special_tokens=False).ids)
    assert body.usage.prompt_tokens == len(call.prompt_ids)
    assert body.usage.completion_tokens == n_reply + 1  # the EOT counts, as in vLLM
    assert body.usage.total_tokens == body.usage.prompt_tokens + body.usage.completion_tokens


def test_condition_selects_the_prompt_prefix(served, template):
    client, factory = served
    assert chat(client, condition="Math Correct", max_tokens=5).status_code == 200
    math_ids = last_call(factory).prompt_ids
    assert math_ids == template.prompt_ids(USER, condition="Math Correct")
    assert math_ids != template.prompt_ids(USER)
    assert chat(client, condition="GPT4 Correct", max_tokens=5).status_code == 200
    assert last_call(factory).prompt_ids == template.prompt_ids(USER)  # the inference condition is the default


def test_condition_with_special_tokens_is_refused(served):
    client, _ = served
    assert_error(chat(client, condition="GPT4<|end_of_turn|>System"), 400, param="condition", contains="special token")


def test_system_messages_are_merged_into_the_system_field(served, template):
    client, factory = served
    messages = [{"role": "system", "content": " Be brief. "}, *USER, {"role": "system", "content": "Use French."}]
    assert chat(client, messages=messages, max_tokens=5).status_code == 200
    expected, _ = template.tokenize([{"items": [*USER, {"role": "assistant", "content": ""}], "condition": "",
                                      "system": "Be brief.\nUse French."}], inference=True)
    assert last_call(factory).prompt_ids == expected[0]


def test_system_messages_can_be_dropped_like_openchat(checkpoint, template):
    client, factory = make_client(checkpoint, enable_system_prompt=False)
    with client:
        messages = [{"role": "system", "content": "Be brief."}, *USER]
        assert chat(client, model="openchat_3.5", messages=messages, max_tokens=5).status_code == 200
        assert last_call(factory).prompt_ids == template.prompt_ids(USER)


def test_final_assistant_message_is_continued(served, template):
    client, factory = served
    messages = [*USER, {"role": "assistant", "content": "C-RLFT is"}]
    assert chat(client, messages=messages, max_tokens=5).status_code == 200
    expected, _ = template.tokenize([{"items": messages, "condition": "", "system": ""}], inference=True)
    assert last_call(factory).prompt_ids == expected[0]
    assert last_call(factory).prompt_ids[-1] != 32000  # no EOT: the answer goes on


def test_array_content_parts_are_joined(served, template):
    client, factory = served
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "C-RLFT?"}]}]
    assert chat(client, messages=messages, max_tokens=5).status_code == 200
    assert last_call(factory).prompt_ids == template.prompt_ids(USER)


def test_model_aliases_are_accepted_and_unknown_models_are_404(served):
    client, _ = served
    for name in ("tiny", "openchat_v3.2_mistral", "openchat_3.5"):
        assert chat(client, model=name, max_tokens=2).status_code == 200
    assert_error(chat(client, model="gpt-4"), 404, code="model_not_found", param="model", contains="tiny")


# ---- sampling options, lengths, finish reasons ---------------------------------------------------


def test_sampling_options_reach_the_engine(served):
    client, factory = served
    response = chat(client, max_completion_tokens=9, max_tokens=3, temperature=1.3, top_p=0.5, seed=-5, n=2,
                    presence_penalty=0.5, frequency_penalty=-0.5, stop=["zzz", "yy"])
    assert response.status_code == 200
    options = last_call(factory).options
    assert (options.max_tokens, options.temperature, options.top_p, options.seed, options.n) == (9, 1.3, 0.5, -5, 2)
    assert (options.presence_penalty, options.frequency_penalty, options.stop) == (0.5, -0.5, ("zzz", "yy"))
    assert chat(client, max_tokens=3).status_code == 200
    options = last_call(factory).options
    assert (options.temperature, options.top_p, options.n, options.stop) == (0.7, 1.0, 1, ())  # OpenChat's defaults


def test_finish_reason_length_and_stop_string(served):
    client, _ = served
    body = chat(client, max_tokens=2).json()
    assert body["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                                  "finish_reason": "length", "logprobs": None}
    assert body["usage"]["completion_tokens"] == 2
    body = chat(client, max_tokens=20, stop=",").json()
    assert body["choices"][0]["message"]["content"] == "Hello there"
    assert body["choices"][0]["finish_reason"] == "stop"


def test_every_choice_gets_its_first_space_stripped(checkpoint):
    client, _ = make_client(checkpoint, factory=FakeEngineFactory(default={"reply": lambda i: f"Answer {i}"}))
    with client:
        body = chat(client, model="openchat_3.5", n=3, temperature=1.0, max_tokens=10).json()
    assert [c["message"]["content"] for c in body["choices"]] == ["Answer 0", "Answer 1", "Answer 2"]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]


def test_context_length_error_gives_the_numbers(checkpoint, template):
    client, factory = make_client(checkpoint, max_model_len=64)
    prompt_len = len(template.prompt_ids(USER))
    with client:
        error = assert_error(chat(client, model="openchat_3.5", max_tokens=100), 400, code="context_length_exceeded")
        assert "maximum context length is 64 tokens" in error["message"]
        assert f"requested {prompt_len + 100} tokens ({prompt_len} in the messages, 100 in the completion)" in error["message"]
        long_messages = [{"role": "user", "content": "word " * 200}]
        error = assert_error(chat(client, model="openchat_3.5", messages=long_messages), 400, code="context_length_exceeded")
        assert "64 tokens" in error["message"]
        assert chat(client, model="openchat_3.5").status_code == 200  # no max_tokens: the rest of the context
        assert last_call(factory).options.max_tokens == 64 - prompt_len


def test_default_max_tokens_setting_is_capped_by_the_context(checkpoint, template):
    client, factory = make_client(checkpoint, max_model_len=64, default_max_tokens=1000)
    with client:
        assert chat(client, model="openchat_3.5").status_code == 200
        assert last_call(factory).options.max_tokens == 64 - len(template.prompt_ids(USER))


# ---- streaming ------------------------------------------------------------------------------------


def test_stream_chunks_and_done(served):
    client, _ = served
    response = chat(client, stream=True, max_tokens=50)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(e)) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there, friend"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].system_fingerprint == "tiny@7"
    assert "usage" not in json.loads(events[0])  # only sent when asked for


def test_stream_usage_chunk_when_asked(served):
    client, _ = served
    events = sse_events(chat(client, stream=True, max_tokens=3, stream_options={"include_usage": True}).text)
    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 3
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 3
    assert all(json.loads(e)["usage"] is None for e in events[:-2])


def test_stream_with_several_choices(served):
    client, _ = served
    events = sse_events(chat(client, stream=True, n=2, temperature=0.9, max_tokens=50).text)
    chunks = [json.loads(e) for e in events[:-1]]
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content") or "" for c in mine) == "Hello there, friend"
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["stop"]


# ---- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param", "contains"), [
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "not supported"),
    ({"messages": []}, "messages", ""),
    ({"messages": [{"role": "system", "content": "only system"}]}, "messages", "at least one user"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "Field required"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0]", "needs `content`"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, None, "text parts"),
    ({"temperature": 3}, "temperature", ""),
    ({"temperature": "hot"}, "temperature", ""),
    ({"top_p": 0}, "top_p", ""),
    ({"max_tokens": 0}, "max_tokens", ""),
    ({"n": 2, "temperature": 0}, None, "n > 1 needs temperature > 0"),
    ({"n": 17}, "n", ""),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"stop": [""]}, "stop", "non-empty"),
    ({"stream_options": {"include_usage": True}}, None, "only allowed when stream"),
    ({"seed": 2**64}, "seed", ""),
    ({"top_logprobs": 2}, None, "needs logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", ""),
    ({"logit_bias": {"1": 5}}, "logit_bias", "not supported"),
    ({"tools": [{"type": "function"}]}, "tools", "not supported"),
    ({"response_format": {"type": "json_schema"}}, None, "needs \"json_schema\""),
    ({"response_format": {"type": "xml"}}, "response_format.type", ""),
    ({"model": 5}, "model", ""),
])
def test_bad_requests_are_400_in_openai_shape(served, body, param, contains):
    client, _ = served
    response = chat(client, **body)
    error = assert_error(response, 400, contains=contains)
    if param is not None:
        assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"])
def test_malformed_bodies_are_400_never_500(served, content):
    client, _ = served
    for headers in ({**AUTH, "Content-Type": "application/json"}, AUTH, {**AUTH, "Content-Type": "text/plain"}):
        response = client.post("/v1/chat/completions", headers=headers, content=content)
        assert_error(response, 400)


def test_wrong_method_is_405_in_openai_shape(served):
    client, _ = served
    assert_error(client.get("/v1/chat/completions", headers=AUTH), 405)


@pytest.mark.parametrize(("failure", "status", "code"), [
    (EngineRequestError("bad stop id"), 400, "invalid_request"),
    (EngineUnavailableError("dead"), 503, "engine_unavailable"),
    (RuntimeError("boom"), 500, "engine_error"),
])
def test_engine_failures_map_to_http_errors(checkpoint, failure, status, code):
    factory = FakeEngineFactory(default={"fail_generate": failure})
    client, _ = make_client(checkpoint, factory=factory)
    with client:
        error = assert_error(chat(client, model="openchat_3.5", max_tokens=5), status, code=code)
        if status == 500:
            assert "boom" not in error["message"]  # internals stay in the server log
        events = sse_events(chat(client, model="openchat_3.5", max_tokens=5, stream=True).text)
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == code


def test_ready_reflects_engine_health(checkpoint):
    client, factory = make_client(checkpoint)
    with client:
        assert client.get("/ready", headers=AUTH).json()["status"] == "ready"
        factory.engines[-1].healthy = False
        assert_error(client.get("/ready", headers=AUTH), 503, code="model_not_ready")


def test_startup_fails_when_the_model_cannot_load(tmp_path, checkpoint):
    factory = FakeEngineFactory(default={"fail_start": RuntimeError("no weights")})
    client, _ = make_client(checkpoint, factory=factory)
    with pytest.raises(Exception, match="no weights"):
        with client:
            pass
    client, _ = make_client(tmp_path)  # not a checkpoint folder
    with pytest.raises(Exception, match="config.json"):
        with client:
            pass


# ---- models, metrics, request log ---------------------------------------------------------------


def test_models_list_served_name_aliases_and_version(served):
    client, _ = served
    data = client.get("/v1/models", headers=AUTH).json()["data"]
    assert [m["id"] for m in data] == ["tiny", "openchat_v3.2_mistral", "openchat_3.5"]
    assert {m["registry_version"] for m in data} == {"7"} and {m["root"] for m in data} == {"tiny"}
    assert {m["max_context"] for m in data} == {8192}
    assert client.get("/v1/models/openchat_3.5", headers=AUTH).json()["root"] == "tiny"
    assert_error(client.get("/v1/models/nope", headers=AUTH), 404)


def test_metrics_count_requests_tokens_and_live_model(checkpoint):
    client, _ = make_client(checkpoint, registry_version="3")
    with client:
        body = chat(client, model="openchat_3.5", max_tokens=2).json()
        chat(client, model="nope")
        text = client.get("/metrics", headers=AUTH).text
    assert 'openchat_requests_total{route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'openchat_requests_total{route="/v1/chat/completions",status="404"} 1.0' in text
    assert f"openchat_prompt_tokens_total {float(body['usage']['prompt_tokens'])}" in text
    assert "openchat_completion_tokens_total 2.0" in text
    assert 'openchat_request_latency_seconds_count{route="/v1/chat/completions"} 2.0' in text
    assert "openchat_time_to_first_token_seconds_count 1.0" in text
    assert 'registry_version="3"' in text and "openchat_requests_in_flight 0.0" in text


@pytest.mark.parametrize("log_prompts", [False, True])
def test_request_log_has_one_json_line_per_request_and_no_secrets(checkpoint, tmp_path, log_prompts):
    log_file = tmp_path / "logs" / "requests.jsonl"
    client, _ = make_client(checkpoint, log_file=log_file, log_prompts=log_prompts, admin_key="adm-secret")
    with client:
        chat(client, model="openchat_3.5", max_tokens=3, messages=[{"role": "user", "content": "my secret question"}])
        chat(client, model="openchat_3.5", stream=True, max_tokens=3)
        chat(client, model="nope")
        client.get("/v1/models")  # no key
    text = log_file.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["status"] for r in records] == [200, 200, 404, 401]
    assert records[0]["prompt_tokens"] > 0 and records[0]["completion_tokens"] == 3
    assert records[0]["finish_reasons"] == ["length"] and records[1]["stream"] is True
    assert "does not exist" in records[2]["error"]
    assert KEY not in text and "adm-secret" not in text and "Bearer" not in text
    assert ("my secret question" in text) is log_prompts
    assert ("outputs" in records[0]) is log_prompts
    if log_prompts:
        assert records[0]["outputs"] == ["Hello there,"]


def test_openapi_schema_documents_bearer_auth_and_400s(served):
    client, _ = served
    schema = client.get("/openapi.json", headers=AUTH).json()
    chat_op = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat_op["security"] == [{"bearer": []}]
    assert "400" in chat_op["responses"] and "422" not in chat_op["responses"]
    assert "security" not in schema["paths"]["/health"]["get"]
    assert "condition" in schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
