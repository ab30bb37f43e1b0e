"""The MLflow registry (real sqlite tracking + registry store): registration, aliases, promotion rules, rollback, loading."""

from __future__ import annotations

import pytest

from openchat_core.registry.promotion import manual_promote, metric_tags, promote_candidate, rollback
from openchat_core.registry.store import ModelRegistry, RegistryError, resolve_model_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, mistral_tokenizer):
    from openchat_core.models.checkpoint import save_checkpoint
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS

    root = tmp_path_factory.mktemp("ckpts")
    out = []
    for seed in range(3):
        model = build_random_model(MODEL_PRESETS["tiny-mistral"], mistral_tokenizer, seed=seed, attn_implementation="sdpa")
        out.append(save_checkpoint(root / f"ep_{seed}", model, mistral_tokenizer, "openchat_3.5", {"epoch": seed}))
    return out


@pytest.fixture()
def registry(tmp_path):
    return ModelRegistry(f"sqlite:///{tmp_path}/mlflow.db", "demo-model")


def _register(registry, ckpt, accuracy, key="k1"):
    return registry.register(ckpt, None, {"openchat.epoch": 0, **metric_tags({"gen/accuracy": accuracy}, key)})


def test_first_candidate_becomes_champion_then_only_improvements_move_it(registry, checkpoints):
    v1 = _register(registry, checkpoints[0], 0.40)
    d1 = promote_candidate(registry, v1, "gen/accuracy", "maximize", 0.05, "k1")
    assert d1.action == "promoted" and registry.by_alias("champion").version == v1.version == "1"

    v2 = _register(registry, checkpoints[1], 0.43)  # better, but by less than the margin
    d2 = promote_candidate(registry, v2, "gen/accuracy", "maximize", 0.05, "k1", evaluator=lambda p: pytest.fail("recorded value reusable"))
    assert d2.action == "challenger" and registry.by_alias("champion").version == "1" and registry.by_alias("challenger").version == "2"
    assert "less than the margin" in registry.version("2").tags["openchat.decision_reason"]

    v3 = _register(registry, checkpoints[2], 0.60)
    d3 = promote_candidate(registry, v3, "gen/accuracy", "maximize", 0.05, "k1")
    assert d3.action == "promoted" and d3.champion_before == "1" and registry.by_alias("champion").version == "3"
    assert registry.champion_history() == ["1", "3"]
    assert [d["action"] for d in registry.decisions()] == ["promoted", "challenger", "promoted"]


def test_champion_is_reevaluated_when_its_result_is_not_comparable(registry, checkpoints):
    v1 = _register(registry, checkpoints[0], 0.9, key="old-eval-sets")
    promote_candidate(registry, v1, "gen/accuracy", "maximize", 0.0, "old-eval-sets")
    v2 = _register(registry, checkpoints[1], 0.5, key="new-eval-sets")
    seen = []
    decision = promote_candidate(registry, v2, "gen/accuracy", "maximize", 0.0, "new-eval-sets",
                                 evaluator=lambda path: seen.append(path) or {"gen/accuracy": 0.3})
    assert decision.action == "promoted" and decision.champion_reevaluated and decision.champion_value == 0.3
    assert (seen[0] / "openchat.json").is_file()  # the champion's own checkpoint, downloaded from the registry
    assert registry.version("1").tags["openchat.eval_key"] == "new-eval-sets"
    with pytest.raises(RegistryError, match="different evaluation"):
        promote_candidate(registry, _register(registry, checkpoints[2], 0.1, key="third"), "gen/accuracy", "maximize", 0.0, "third")


def test_rollback_restores_the_previous_champion(registry, checkpoints):
    with pytest.raises(RegistryError, match="no champion"):
        rollback(registry)
    v1, v2 = _register(registry, checkpoints[0], 0.1), _register(registry, checkpoints[1], 0.2)
    promote_candidate(registry, v1, "gen/accuracy", "maximize", 0.0, "k1")
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(registry)
    promote_candidate(registry, v2, "gen/accuracy", "maximize", 0.0, "k1")
    decision = rollback(registry, "bad answers in production")
    assert decision.action == "rollback" and registry.by_alias("champion").version == "1"
    assert registry.decisions()[-1]["reason"].startswith("bad answers in production: champion v2 -> v1")
    assert manual_promote(registry, "2", "hotfix approved").action == "manual" and registry.by_alias("champion").version == "2"


def test_champion_uri_loads_in_transformers_and_as_pyfunc(registry, checkpoints):
    import mlflow.pyfunc
    import torch
    from transformers import AutoModelForCausalLM

    promote_candidate(registry, _register(registry, checkpoints[0], 0.5), "gen/accuracy", "maximize", 0.0, "k1")
    path = resolve_model_dir("models:/demo-model@champion", registry.tracking_uri)
    assert (path / "openchat.json").is_file() and (path / "generation_config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(str(path))
    original = AutoModelForCausalLM.from_pretrained(str(checkpoints[0]))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), original.state_dict().values()))
    mlflow.set_tracking_uri(registry.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/demo-model@champion")
    replies = model.predict([{"messages": [{"role": "user", "content": "hi"}]}], params={"max_new_tokens": 4})
    assert len(replies) == 1 and isinstance(replies[0], str)
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder"):
        resolve_model_dir("/nope", None)


def test_registry_commands_for_people(registry, checkpoints):
    from typer.testing import CliRunner

    from openchat_core.cli import build_app

    v1, v2 = _register(registry, checkpoints[0], 0.5), _register(registry, checkpoints[1], 0.4)
    promote_candidate(registry, v1, "gen/accuracy", "maximize", 0.0, "k1")
    app, runner, uri = build_app(), CliRunner(), ["--mlflow-uri", registry.tracking_uri]

    refused = runner.invoke(app, ["promote", "demo-model", "2", *uri])
    assert refused.exit_code == 0 and "challenger" in refused.output and registry.by_alias("champion").version == "1"
    forced = runner.invoke(app, ["promote", "demo-model", "2", "--force", "--reason", "board approved", *uri])
    assert forced.exit_code == 0 and registry.by_alias("champion").version == "2"
    listing = runner.invoke(app, ["models", "demo-model", *uri])
    assert listing.exit_code == 0 and "champion" in listing.output and "manual v2: board approved" in listing.output
    back = runner.invoke(app, ["rollback", "demo-model", "--reason", "bad answers", *uri])
    assert back.exit_code == 0 and "champion v2 -> v1" in back.output and registry.by_alias("champion").version == "1"
    missing = runner.invoke(app, ["models", "no-such-model", *uri])
    assert missing.exit_code == 1 and "no registered model" in missing.output
