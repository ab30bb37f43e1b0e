"""Generation engines: the transformers engine stops at EOT, pads correctly; engine selection and shared rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from openchat_core import serve_env
from openchat_core.evaluation import generation, generators
from openchat_core.evaluation.generation import Generation, Generator, cut_at_stop
from openchat_core.evaluation.generators import make_generator
from openchat_core.models.checkpoint import checkpoint_model_type, context_limit
from tests.unit.eval_models import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("eval-gen") / "ckpt")


@pytest.fixture(scope="module")
def engine(checkpoint):
    return make_generator("transformers", checkpoint, batch_size=4)


@pytest.fixture(scope="module")
def prompts(engine) -> list[list[int]]:
    from openchat_core.templates.conversation import ConversationTemplate

    template = ConversationTemplate.from_tokenizer("openchat_3.5", engine.tokenizer)
    questions = ["What is the capital of France?", "Evaluate 2+3", "Sort these words: banana apple",
                 "Hello there, how are you doing today, my friend? " * 3, "x"]
    return [template.prompt_ids([{"role": "user", "content": q}]) for q in questions]


@pytest.mark.parametrize(("ids", "expected"), [
    ([5, 6, 7], ((5, 6, 7), "length")),
    ([5, 9, 7, 9], ((5, 9), "stop")),
    ([9], ((9,), "stop")),
    ([], ((), "length")),
])
def test_cut_at_stop(ids, expected):
    assert cut_at_stop(ids, [9, 10]) == expected


def test_transformers_engine_defaults_to_the_templates_eot(engine):
    assert isinstance(engine, Generator)
    assert engine.stop_token_ids == [32000]  # <|end_of_turn|>, not the tokenizer's EOS (2)
    assert engine.describe()["dtype"] == "float32"


def test_generation_runs_to_max_new_tokens_without_a_stop(engine, prompts):
    out = engine.generate(prompts, 6)
    assert all(g.finish_reason == "length" and len(g.token_ids) == 6 for g in out)
    assert all(32000 not in g.token_ids for g in out)
    assert out[0].text == engine.tokenizer.decode(list(out[0].token_ids), skip_special_tokens=True)


def test_stops_at_the_stop_id_and_returns_nothing_after_it(checkpoint, engine, prompts):
    free = engine.generate(prompts[:1], 12)[0].token_ids
    # the first token that was not generated before: where a stop on it must cut
    k = next(i for i in range(1, len(free)) if free[i] not in free[:i])
    stopping = make_generator("transformers", checkpoint, stop_token_ids=[free[k]])
    got = stopping.generate(prompts[:1], 12)[0]
    assert got.finish_reason == "stop"
    assert got.token_ids == free[: k + 1]  # up to and including the stop id, nothing after
    assert got.text == engine.tokenizer.decode(list(free[:k]), skip_special_tokens=True)


def _model_emitting(engine, token: int, instead_of: int):
    """A copy of the model whose output row for `token` is `instead_of`'s, scaled up by 0.1%.

    With untied embeddings only the output layer changes: wherever the model would emit
    `instead_of` (a positive top logit), it now emits `token`, and nothing else changes.
    """
    import copy

    import torch

    model = copy.deepcopy(engine.model)
    with torch.no_grad():
        weight = model.get_output_embeddings().weight
        weight[token] = weight[instead_of] * 1.001
    return model


def test_stops_at_the_templates_eot(engine, prompts):
    free = engine.generate(prompts[:1], 12)[0].token_ids
    assert 32000 not in free
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    eot_at_k = type(engine)(_model_emitting(engine, 32000, free[k]), engine.tokenizer, engine.stop_token_ids)
    got = eot_at_k.generate(prompts[:1], 12)[0]
    assert got == Generation(engine.tokenizer.decode(list(free[:k]), skip_special_tokens=True), free[:k] + (32000,), "stop")


def test_the_tokenizers_eos_does_not_stop_generation(engine, prompts):
    """OpenChat evaluates with ignore_eos=True: only EOT ends an answer, even though the checkpoint's
    generation_config lists EOS (2) too."""
    free = engine.generate(prompts[:1], 12)[0].token_ids
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    eos_at_k = type(engine)(_model_emitting(engine, 2, free[k]), engine.tokenizer, engine.stop_token_ids)
    got = eos_at_k.generate(prompts[:1], 12)[0]
    assert got.finish_reason == "length" and len(got.token_ids) == 12
    assert got.token_ids[: k + 1] == free[:k] + (2,)


def test_batched_left_padding_matches_one_prompt_at_a_time(engine, prompts):
    assert len({len(p) for p in prompts}) > 2  # different lengths, so batches are padded
    batched = engine.generate(prompts, 8)
    engine_one = type(engine)(engine.model, engine.tokenizer, engine.stop_token_ids, batch_size=1)
    single = engine_one.generate(prompts, 8)
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert len({g.token_ids for g in batched}) > 1  # outputs actually differ between prompts


def test_results_come_back_in_prompt_order(engine, prompts):
    forward = engine.generate(prompts, 4)
    backward = engine.generate(prompts[::-1], 4)
    assert forward == backward[::-1]
    assert all(isinstance(g, Generation) for g in forward)


def test_argument_errors(engine, checkpoint):
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate([[1, 2]], 0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1, 2], []], 4)
    with pytest.raises(ValueError, match="stop_token_ids must not be empty"):
        type(engine)(engine.model, engine.tokenizer, [])
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        make_generator("tensorrt", checkpoint)


def test_plain_folder_needs_a_model_type(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model_type="):
        checkpoint_model_type(tmp_path)
    assert checkpoint_model_type(tmp_path, "openchat_3.6").name == "openchat_3.6"


def test_context_limit_is_capped_by_position_embeddings(tmp_path, checkpoint):
    assert context_limit(checkpoint, "openchat_3.5") == 8192
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 2048}')
    assert context_limit(tmp_path, "openchat_3.5") == 2048


def test_serve_python_lookup(monkeypatch, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("")
    monkeypatch.setenv(serve_env.SERVE_PYTHON_ENV, str(fake))
    assert serve_env.find_serve_python() == fake
    monkeypatch.setenv(serve_env.SERVE_PYTHON_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="OPENCHAT_SERVE_PYTHON"):
        serve_env.find_serve_python()


def test_auto_falls_back_to_transformers_without_a_serving_env(monkeypatch, checkpoint):
    monkeypatch.setattr(generators, "find_serve_python", lambda: None)
    assert make_generator("auto", checkpoint).name == "transformers"


def test_adapters_vllm_cannot_apply_go_to_transformers_under_auto_and_are_refused_by_vllm(monkeypatch, tmp_path,
                                                                                       mistral_tokenizer):
    from tests.unit.serving_fakes import make_adapter_checkpoint, make_tokenizer_checkpoint

    base = make_tokenizer_checkpoint(tmp_path / "base", mistral_tokenizer)
    plain = make_adapter_checkpoint(tmp_path / "plain", mistral_tokenizer, base)
    embeddings = make_adapter_checkpoint(tmp_path / "emb", mistral_tokenizer, base, modules_to_save=["embed_tokens", "lm_head"])
    monkeypatch.setattr(generators, "find_serve_python", lambda: tmp_path / "python")
    assert generators.choose_engine("auto", plain) == "vllm"
    assert generators.choose_engine("auto", embeddings) == "transformers"
    with pytest.raises(ValueError, match="engine 'vllm': .*modules_to_save.*registry.merge_adapter: true.*engine transformers"):
        generators.choose_engine("vllm", embeddings)


def test_vllm_engine_without_serving_env_says_how_to_fix(monkeypatch, checkpoint):
    from openchat_core.evaluation import vllm_generator

    monkeypatch.setattr(vllm_generator, "find_serve_python", lambda: None)
    with pytest.raises(FileNotFoundError, match="OPENCHAT_SERVE_PYTHON.*transformers engine"):
        make_generator("vllm", checkpoint)


def test_vllm_worker_imports_only_the_standard_library():
    """The worker runs in the serving env: nothing but stdlib at import, vLLM only inside main()."""
    import ast

    source = Path(generation.__file__).with_name("vllm_worker.py").read_text()
    modules = set()
    for node in ast.parse(source).body:  # module level only; main() imports vllm lazily
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module.split(".")[0])
    assert modules <= {"__future__", "argparse", "json", "os", "sys", "time", "pathlib"}, modules
