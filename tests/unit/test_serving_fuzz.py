"""Schemathesis fuzzing of the app's own OpenAPI schema (fake engine, in-process): no input may cause a 500.

Valid (positive) and schema-violating (negative) inputs for every operation. Schemathesis'
pytest lazy-fixture integration does not run under pytest 9 (it reads `Function._nodeid`), so each
operation's Hypothesis strategy is driven directly. Needs `schemathesis` (pipeline env:
schemathesis==4.32.5); skipped where it is not installed.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from openchat_core.serving.app import build_app  # noqa: E402
from openchat_core.serving.settings import ServeSettings  # noqa: E402
from tests.unit.serving_fakes import FakeEngineFactory, make_tokenizer_checkpoint  # noqa: E402

KEY, ADMIN = "sk-fuzz", "adm-fuzz"
AUTH, ADMIN_AUTH = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {ADMIN}"}
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
OPERATIONS = [
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/tokenize", "POST"),
    ("/detokenize", "POST"),
    ("/tokenizer_info", "GET"),
    ("/v1/models", "GET"),
    ("/v1/models/{model_id}", "GET"),
    ("/health", "GET"),
    ("/ready", "GET"),
    ("/metrics", "GET"),
    ("/admin/load", "POST"),
    ("/admin/status", "GET"),
]


def steer_into_generation(body: dict) -> None:
    """Fix what the schema cannot say (a served model name, content on user/system messages), so most
    valid-looking requests get past the validators into rendering and generation, where 500s would hide."""
    body["model"] = "openchat_3.5"
    for message in body.get("messages", []):
        if message.get("content") is None and message.get("role") != "assistant":
            message["content"] = "text"


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, mistral_tokenizer):
    checkpoint = make_tokenizer_checkpoint(tmp_path_factory.mktemp("fuzz") / "tiny", mistral_tokenizer)
    settings_ = ServeSettings(model=checkpoint, api_keys=[KEY], admin_key=ADMIN, max_model_len=512,
                              smoke_timeout_s=5, drain_timeout_s=0)
    app = build_app(settings_, engine_factory=FakeEngineFactory())
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


def test_every_operation_is_fuzzed(api_schema):
    found = {(path, method.upper()) for path in api_schema for method in api_schema[path]}
    assert found == set(OPERATIONS)


WITH_INPUTS = {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize", "/v1/models/{model_id}",
               "/admin/load"}  # negative mode needs something to break
CASES = [(path, method, GenerationMode.POSITIVE) for path, method in OPERATIONS] + \
        [(path, method, GenerationMode.NEGATIVE) for path, method in OPERATIONS if path in WITH_INPUTS]


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_no_input_causes_a_server_error(api_schema, path, method, mode):
    operation = api_schema[path][method]
    headers = ADMIN_AUTH if path.startswith("/admin") else AUTH

    examples = 150 if path == "/v1/chat/completions" else 40

    @settings(FUZZ, max_examples=examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        if path in ("/v1/chat/completions", "/v1/completions") and mode == GenerationMode.POSITIVE:
            steer_into_generation(case.body)
        case.call_and_validate(headers=headers, checks=[not_a_server_error])

    fuzz()
