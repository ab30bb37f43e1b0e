"""LoRA adapters (peft) on the packed trainer's objective: gradients, what trains, the checkpoint format and its reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from openchat_core.training.settings import TrainConfig
from openchat_core.models.adapters import apply_lora, load_model, merge_adapter, trainable_parameter_count
from openchat_core.models.checkpoint import adapter_base_path, context_limit, is_complete_checkpoint, read_checkpoint, save_checkpoint
from openchat_core.training.loss import packed_forward, weighted_sums
from tests.unit.test_training_math import _batch, _seq

torch.set_num_threads(1)


def _tiny(tokenizer, dtype=torch.float64):
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS

    return build_random_model(MODEL_PRESETS["tiny-mistral"], tokenizer, seed=0, attn_implementation="sdpa").to(dtype)


def _lora(model, tmp_path, **kw):
    return apply_lora(model, TrainConfig(adapter="lora", lora_r=4, lora_dropout=0.0), base_path=tmp_path / "base",
                      init_lora_weights=False, **kw)  # random B: gradients reach both factors


def test_packed_lora_gradients_equal_per_sequence_gradients_and_only_adapters_train(mistral_tokenizer, tmp_path):
    model = _lora(_tiny(mistral_tokenizer), tmp_path)
    rng = np.random.default_rng(3)
    seqs = [_seq(rng, n) for n in (9, 4, 16)]
    weighted_sums(model, _batch(seqs))[0].backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for s in seqs:
        weighted_sums(model, _batch([s]))[0].backward()
    assert packed and all("lora_" in n for n in packed)  # the base is frozen: no gradient, no optimizer state
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(packed)
    assert {n.split(".")[-4] for n in packed} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    for name, grad in packed.items():
        p = dict(model.named_parameters())[name]
        assert grad.abs().sum() > 0 and torch.allclose(grad, p.grad, atol=1e-9), name


def test_added_special_tokens_train_embeddings_and_lm_head(mistral_tokenizer, tmp_path):
    model = _lora(_tiny(mistral_tokenizer), tmp_path, train_embeddings=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens.modules_to_save" in n for n in trainable)
    assert any("lora_A" in n for n in trainable)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()  # still tied


def test_target_modules_setting(mistral_tokenizer, tmp_path):
    cfg = TrainConfig(adapter="lora", lora_target_modules=" q_proj, v_proj ,")
    assert cfg.lora_target_modules == "q_proj,v_proj"
    model = apply_lora(_tiny(mistral_tokenizer, torch.float32), cfg, base_path=tmp_path)
    assert trainable_parameter_count(model) == 2 * 8 * (128 + 128) + 2 * 8 * (128 + 64)  # 2 layers x (A: r x in, B: out x r) of q (128->128), v (128->64)
    with pytest.raises(ValueError, match="lora_target_modules"):
        TrainConfig(lora_target_modules=" , ")
    with pytest.raises(ValueError, match="lora_target_modules='nope'.*all-linear"):
        apply_lora(_tiny(mistral_tokenizer, torch.float32), TrainConfig(lora_target_modules="nope"), base_path=tmp_path)


def test_adapter_checkpoint_reloads_with_peft_and_merges_to_the_same_logits(mistral_tokenizer, tmp_path):
    base = _tiny(mistral_tokenizer, torch.float32)
    base.save_pretrained(tmp_path / "base")
    mistral_tokenizer.save_pretrained(tmp_path / "base")
    model = _lora(base, tmp_path)
    ckpt = save_checkpoint(tmp_path / "ep_0", model, mistral_tokenizer, "openchat_3.5",
                           {"epoch": 0, "adapter": {"type": "lora", "base_model": str(tmp_path / "base")}})
    files = {p.name for p in ckpt.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "generation_config.json", "openchat.json", "tokenizer.json"} <= files
    assert "model.safetensors" not in files  # only the adapter is stored
    assert is_complete_checkpoint(ckpt) and read_checkpoint(ckpt).epoch == 0
    assert json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tmp_path / "base")
    assert 32000 in json.loads((ckpt / "generation_config.json").read_text())["eos_token_id"]
    assert adapter_base_path(ckpt) == tmp_path / "base" and context_limit(ckpt, "openchat_3.5") == 8192

    rng = np.random.default_rng(4)
    batch = _batch([_seq(rng, 11), _seq(rng, 6)])
    with torch.no_grad():
        trained = packed_forward(model.eval(), batch).logits
        reloaded, tokenizer = load_model(ckpt, attn_implementation="sdpa")
        assert tokenizer.chat_template and 32000 in reloaded.generation_config.eos_token_id
        assert torch.allclose(packed_forward(reloaded, batch).logits, trained, atol=1e-5)
        with reloaded.disable_adapter():
            assert not torch.allclose(packed_forward(reloaded, batch).logits, trained, atol=1e-3)  # the adapter changes the output
        merged = merge_adapter(ckpt, tmp_path / "merged")
        full, _ = load_model(merged, attn_implementation="sdpa")
        assert torch.allclose(packed_forward(full, batch).logits, trained, atol=1e-4)
    assert (merged / "model.safetensors").is_file() and read_checkpoint(merged).metadata["merged_from"]["type"] == "lora"


def test_adapter_without_its_base_fails_naming_it(mistral_tokenizer, tmp_path):
    ckpt = save_checkpoint(tmp_path / "ep_0", _lora(_tiny(mistral_tokenizer, torch.float32), tmp_path), mistral_tokenizer, "openchat_3.5",
                           {"adapter": {"type": "lora", "base_model": str(tmp_path / "gone")}})
    with pytest.raises(FileNotFoundError, match="gone.*not a local model folder"):
        load_model(ckpt)


def test_train_command_passes_the_lora_options_to_the_trainer(tmp_path, monkeypatch):
    """The README's `openchat train ... --adapter lora ...` line: generated options reach the trainer's config."""
    from typer.testing import CliRunner

    from openchat_core.cli import build_app
    from openchat_core.training import launcher

    seen = []
    monkeypatch.setattr(launcher, "run_training", lambda cfg, on_line: seen.append(cfg))
    (tmp_path / "t.parquet").write_bytes(b"")
    result = CliRunner().invoke(build_app(), [
        "train", "--data", str(tmp_path / "t.parquet"), "--model-path", "preset:tiny-mistral", "--out", str(tmp_path / "out"),
        "--no-mlflow", "--adapter", "lora", "--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0.1",
        "--lora-target-modules", "q_proj,v_proj"])
    assert result.exit_code == 0, result.output
    t = seen[0].train
    assert (t.adapter, t.lora_r, t.lora_alpha, t.lora_dropout, t.lora_target_modules) == ("lora", 16, 32.0, 0.1, "q_proj,v_proj")
    bad = CliRunner().invoke(build_app(), ["train", "--data", str(tmp_path / "t.parquet"), "--model-path", "preset:tiny-mistral",
                                           "--out", str(tmp_path / "out"), "--no-mlflow", "--adapter", "qlora"])
    assert bad.exit_code != 0 and "'none' or 'lora'" in bad.output
