"""LoRA through the real DeepSpeed launcher on CPU: 1 and 2 processes, the adapter checkpoint reloaded with peft, resume."""

from __future__ import annotations

import glob
import os

import pytest
import torch

from openchat_core.models.checkpoint import list_epoch_checkpoints
from openchat_core.training.launcher import run_training
from tests.integration.test_training_deepspeed import _cfg, _epoch_mean, _log, demo_tokens, kill_after_state  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LORA = {"adapter": "lora", "lora_r": 8, "lora_dropout": 0.0, "lr": 1e-2, "batch_max_len": 512}


def _heldout_loss(model, eval_file: str) -> float:
    from openchat_core.training.data import TokenDataset, sequential_batches
    from openchat_core.training.loss import weighted_sums

    ds = TokenDataset(eval_file)
    loss = seqs = 0.0
    with torch.no_grad():
        for indices in sequential_batches(ds.lengths, 512):
            loss += weighted_sums(model, ds.batch(indices))[0].item()
            seqs += float(ds.num_seqs[indices].sum())
    return loss / seqs


def _adapter_numel(ckpt) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(ckpt.path / "adapter_model.safetensors")).values())


def test_one_process_lora_trains_adapters_only_and_the_checkpoint_reloads_with_the_trained_loss(tmp_path, demo_tokens):
    from openchat_core.models.adapters import load_model

    cfg = _cfg(tmp_path, demo_tokens, epochs=2, **LORA)
    lines: list[str] = []
    run_training(cfg, on_line=lines.append)
    log = _log(cfg)
    assert _epoch_mean(log, 1) < _epoch_mean(log, 0)
    assert any("LoRA r=8 on all-linear" in line for line in lines)

    ckpt = list_epoch_checkpoints(cfg.out_dir)[-1]
    assert ckpt.metadata["adapter"]["base_model"] == os.path.join(cfg.out_dir, "base_model")
    assert not (ckpt.path / "model.safetensors").exists()
    optim = torch.load(glob.glob(f"{cfg.out_dir}/state/*/*optim_states.pt")[0], map_location="cpu", weights_only=False)
    fp32 = sum(t.numel() for t in optim["optimizer_state_dict"]["single_partition_of_fp32_groups"])
    assert _adapter_numel(ckpt) <= fp32 <= _adapter_numel(ckpt) + 64  # optimizer state for the adapters only (+ alignment)

    model, tokenizer = load_model(ckpt.path, packed=True)
    assert 32000 in model.generation_config.eos_token_id and tokenizer.chat_template
    trained = _heldout_loss(model, cfg.eval_data)
    assert trained == pytest.approx(ckpt.metadata["metrics"]["eval/loss"], rel=1e-4)  # the trainer's own held-out loss
    with model.disable_adapter():
        assert _heldout_loss(model, cfg.eval_data) > trained + 0.1  # the base alone is worse: the adapter carries the training


def test_two_process_zero3_lora_gathers_the_adapter(tmp_path, demo_tokens):
    cfg = _cfg(tmp_path, demo_tokens, epochs=1, num_procs=2, zero_stage=3, **LORA).model_copy(update={"eval_data": None})
    lines: list[str] = []
    run_training(cfg, on_line=lines.append)
    assert any("on 2 rank(s)" in line for line in lines)
    ckpt = list_epoch_checkpoints(cfg.out_dir)[-1]
    from safetensors.torch import load_file

    weights = load_file(str(ckpt.path / "adapter_model.safetensors"))
    assert weights and all(t.numel() > 0 for t in weights.values())  # ZeRO-3 partitions gathered
    assert any("lora_B" in k and t.abs().sum() > 0 for k, t in weights.items())  # B starts at zero: nonzero means it trained


def test_killed_lora_run_resumes_and_finishes(tmp_path, demo_tokens):
    cfg = _cfg(tmp_path, demo_tokens, epochs=2, **LORA).model_copy(update={"checkpoint_every_steps": 3, "eval_data": None})
    saved = kill_after_state(cfg, min_step=6)

    lines: list[str] = []
    run_training(cfg.model_copy(update={"resume": True}), on_line=lines.append)
    assert any(f"global step {saved.global_step}" in line for line in lines)
    steps = sorted({r["step"] for r in _log(cfg)})
    assert steps == list(range(1, steps[-1] + 1))
    assert [c.epoch for c in list_epoch_checkpoints(cfg.out_dir)] == [0, 1]
    assert (list_epoch_checkpoints(cfg.out_dir)[-1].path / "adapter_config.json").is_file()
