"""LoRA checkpoints in the real MLflow registry (sqlite): the adapter with its base lineage, or merged, and both load back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openchat_core.registry.adapters import registrable
from openchat_core.registry.store import ModelRegistry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def adapter_checkpoint(tmp_path_factory, mistral_tokenizer):
    from openchat_core.training.settings import TrainConfig
    from openchat_core.models.adapters import apply_lora
    from openchat_core.models.checkpoint import save_checkpoint
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS

    root = tmp_path_factory.mktemp("lora")
    base = build_random_model(MODEL_PRESETS["tiny-mistral"], mistral_tokenizer, seed=0, attn_implementation="sdpa")
    base.save_pretrained(root / "base_model")
    mistral_tokenizer.save_pretrained(root / "base_model")
    model = apply_lora(base, TrainConfig(adapter="lora", lora_r=4), base_path=root / "base_model", init_lora_weights=False)
    return save_checkpoint(root / "ep_0", model, mistral_tokenizer, "openchat_3.5", {
        "epoch": 0, "adapter": {"type": "lora", "base_model": str(root / "base_model"), "r": 4, "target_modules": "all-linear"}})


def _logits(path):
    from openchat_core.models.adapters import load_model

    model, _ = load_model(path, attn_implementation="sdpa")
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 420, 6316, 28781]])).logits


def test_adapter_registers_with_its_base_lineage_and_loads_back(tmp_path, adapter_checkpoint):
    registry = ModelRegistry(f"sqlite:///{tmp_path}/mlflow.db", "lora-model")
    target = registrable(adapter_checkpoint)
    assert target.weights_file.name == "adapter_model.safetensors"
    version = registry.register(target.checkpoint, None, target.tags)
    tags = registry.version(version.version).tags
    assert tags["openchat.adapter"] == "lora" and tags["openchat.adapter.r"] == "4"
    assert tags["openchat.adapter.base_model"] == str(adapter_checkpoint.parent / "base_model")
    info, path = registry.resolve("1")
    assert (path / "adapter_config.json").is_file() and not (path / "model.safetensors").exists()
    assert torch.allclose(_logits(path), _logits(adapter_checkpoint))  # the registered copy still finds its base


def test_merge_adapter_registers_a_full_checkpoint_with_the_same_outputs(tmp_path, adapter_checkpoint):
    registry = ModelRegistry(f"sqlite:///{tmp_path}/mlflow.db", "lora-merged")
    target = registrable(adapter_checkpoint, merge_adapter_weights=True)
    assert target.checkpoint.name == "merged_ep_0" and target.tags["openchat.adapter"] == "merged"
    registry.register(target.checkpoint, None, target.tags)
    _, path = registry.resolve("1")
    assert (path / "model.safetensors").is_file() and not (path / "adapter_config.json").exists()
    assert torch.allclose(_logits(path), _logits(adapter_checkpoint), atol=1e-4)
    assert registry.version("1").tags["openchat.adapter.source"] == str(adapter_checkpoint.resolve())


def test_serve_resolves_lora_registry_aliases_to_local_adapter_folders(tmp_path, adapter_checkpoint):
    """`openchat serve ... --lora support=models:/NAME@ALIAS`: the registered adapter's folder goes to the server."""
    from openchat_core.cli.serve_commands import resolve_lora_args
    from openchat_core.registry.store import RegistryError

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    registry = ModelRegistry(uri, "support-lora")
    target = registrable(adapter_checkpoint)
    registry.set_alias("champion", registry.register(target.checkpoint, None, target.tags).version)
    args = resolve_lora_args(["--lora", "support=models:/support-lora@champion", "plain=/x", "--port", "1",
                              "--lora=two=models:/support-lora/1"], uri)
    support, two = Path(args[1].partition("=")[2]), Path(args[5].removeprefix("--lora=two=").strip())
    assert args[0] == "--lora" and args[1].startswith("support=") and args[2:5] == ["plain=/x", "--port", "1"]
    assert (support / "adapter_config.json").is_file() and (two / "adapter_config.json").is_file()
    with pytest.raises(RegistryError):
        resolve_lora_args(["--lora", "x=models:/support-lora@missing"], uri)
