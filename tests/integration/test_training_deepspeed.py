"""Real DeepSpeed runs through the real launcher on CPU (gloo): 1 and 2 processes, kill-and-resume, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from openchat_core.config import ModelConfig, TrainConfig
from openchat_core.models.checkpoint import list_epoch_checkpoints
from openchat_core.training.launcher import build_command, launch_env, run_training
from openchat_core.training.trainer_config import TrainerConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_tokens(tmp_path_factory, mistral_tokenizer):
    """Pretokenized demo data (train and held-out) for openchat_3.5 on the Mistral tokenizer."""
    from openchat_core.data.demo import DemoSizes, generate_demo_data
    from openchat_core.data.pretokenize import pretokenize_file
    from openchat_core.data.validate import validate_files
    from openchat_core.data.weights import WeightPolicy, assign_weights_file
    from openchat_core.templates.conversation import TemplateSpec
    from openchat_core.templates.tokenizers import tokenizer_fingerprint

    root = tmp_path_factory.mktemp("tokens")
    generate_demo_data(root / "demo", sizes=DemoSizes(train=800, eval_per_task=8))
    spec = TemplateSpec.from_tokenizer("openchat_3.5", mistral_tokenizer)
    policy = WeightPolicy(condition_weights={"GPT4 Correct": 1.0, "GPT3": 0.1})
    out = {}
    for split in ("train", "eval"):
        validate_files([root / "demo" / f"{split}.jsonl"], root / split / "v")
        assign_weights_file(root / split / "v" / "conversations.parquet", root / split / "w", policy)
        pretokenize_file(root / split / "w" / "weighted.parquet", root / f"{split}.parquet", spec, tokenizer_fingerprint=tokenizer_fingerprint(mistral_tokenizer))
        out[split] = str(root / f"{split}.parquet")
    return out


def _cfg(tmp_path, demo_tokens, **train) -> TrainerConfig:
    settings = {"epochs": 3, "batch_max_len": 1024, "lr": 3e-3, "zero_stage": 2, "num_procs": 1, "seed": 7} | train
    return TrainerConfig(data=demo_tokens["train"], eval_data=demo_tokens["eval"], out_dir=str(tmp_path / "out"),
                         train=TrainConfig(**settings), model=ModelConfig(base="preset:tiny-mistral"),
                         tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="test-train")


def _log(cfg) -> list[dict]:
    return [json.loads(x) for x in open(os.path.join(cfg.out_dir, "train_log.jsonl"))]


def _epoch_mean(log, epoch):
    return float(np.mean([r["train/loss"] for r in log if r["epoch"] == epoch]))


def test_one_process_run_lowers_loss_tracks_and_checkpoints_stop_at_eot(tmp_path, demo_tokens):
    import torch
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openchat_core.templates.conversation import ConversationTemplate

    cfg = _cfg(tmp_path, demo_tokens, epochs=4)
    lines: list[str] = []
    run_training(cfg, on_line=lines.append)
    log = _log(cfg)
    assert _epoch_mean(log, 3) < 0.6 * _epoch_mean(log, 0)
    assert any("packing efficiency" in line for line in lines)

    checkpoints = list_epoch_checkpoints(cfg.out_dir)
    assert [c.epoch for c in checkpoints] == [0, 1, 2, 3]
    assert checkpoints[-1].metadata["metrics"]["eval/loss"] < checkpoints[0].metadata["metrics"]["eval/loss"]

    client = MlflowClient(cfg.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("test-train").experiment_id])[0]
    assert run.data.params["train.lr"] == "0.003" and run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == len(log)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")] == [0, 1, 2, 3]
    for name in ("train/accuracy", "train/lr", "train/tokens_per_s", "train/packing_efficiency"):
        assert client.get_metric_history(run.info.run_id, name)
    assert run.data.tags["openchat.checkpoint.ep_3"] == str(checkpoints[-1].path)

    path = str(checkpoints[-1].path)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert tok.chat_template and 32000 in model.generation_config.eos_token_id
    prompt = ConversationTemplate.from_tokenizer("openchat_3.5", tok).prompt_ids([{"role": "user", "content": "Add 2 and 3"}])
    out = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt):].tolist()
    assert out[-1] == 32000 and len(out) < 32  # stopped at the end-of-turn token, not at the length limit


def test_two_process_zero3_run_lowers_loss(tmp_path, demo_tokens):
    cfg = _cfg(tmp_path, demo_tokens, num_procs=2, zero_stage=3, epochs=2)
    lines: list[str] = []
    run_training(cfg, on_line=lines.append)
    log = _log(cfg)
    assert any("on 2 rank(s)" in line for line in lines)
    assert _epoch_mean(log, 1) < 0.8 * _epoch_mean(log, 0)
    ckpt = list_epoch_checkpoints(cfg.out_dir)[-1]
    from safetensors.torch import load_file

    weights = load_file(str(ckpt.path / "model.safetensors"))
    assert all(t.numel() > 0 for t in weights.values())  # ZeRO-3 partitions were gathered, not saved as empty shards


def kill_after_state(cfg: TrainerConfig, min_step: int):
    """Launch `cfg` (one process), SIGKILL it once a resumable state at `min_step` or later is on disk; return that state."""
    from openchat_core.training.state import latest_resume_point

    os.makedirs(cfg.out_dir)
    config_path = os.path.join(cfg.out_dir, "trainer_config.json")
    with open(config_path, "w") as f:
        f.write(cfg.model_dump_json())
    proc = subprocess.Popen(build_command(config_path, 1), env=launch_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and (latest_resume_point(cfg.out_dir) is None or latest_resume_point(cfg.out_dir).global_step < min_step):
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = latest_resume_point(cfg.out_dir)
    assert saved is not None and saved.global_step >= min_step
    return saved


def test_killed_run_resumes_with_the_same_data_order_and_finishes(tmp_path, demo_tokens):
    from openchat_core.training.data import TokenDataset
    from openchat_core.training.sampler import MultipackSampler
    from openchat_core.training.trainer import batch_digest

    cfg = _cfg(tmp_path, demo_tokens, epochs=2).model_copy(update={"checkpoint_every_steps": 4, "eval_data": None})
    saved = kill_after_state(cfg, min_step=8)

    lines: list[str] = []
    run_training(cfg.model_copy(update={"resume": True}), on_line=lines.append)
    assert any(f"global step {saved.global_step}" in line for line in lines)

    log = _log(cfg)
    last = {r["step"]: r["batch"] for r in log}  # a step logged twice (after the saved state, before the kill) keeps its rerun
    ds = TokenDataset(cfg.data, max_len=1024)
    sampler = MultipackSampler(ds.lengths, ds.num_seqs, 1024, num_ranks=1, seed=7)
    expected = [batch_digest(b) for epoch in range(2) for b in sampler.plan(epoch).rank_batches(0)]
    assert [last[s] for s in sorted(last)] == expected  # every step ran, on exactly the planned batches
    assert min(r["step"] for r in log[-(len(expected) - saved.global_step):]) == saved.global_step + 1
    assert [c.epoch for c in list_epoch_checkpoints(cfg.out_dir)] == [0, 1]
