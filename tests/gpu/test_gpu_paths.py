"""GPU-only paths: flash-attn varlen packing and bf16 DeepSpeed training. Skipped without CUDA (see conftest)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_flash_attention_2_packed_equals_per_sequence(mistral_tokenizer):
    import torch
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed (pip install flash-attn --no-build-isolation on a CUDA machine)")
    from openchat_core.training.data import PackedBatch
    from openchat_core.training.loss import packed_forward
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS

    model = build_random_model(MODEL_PRESETS["tiny-mistral"], mistral_tokenizer, seed=0, dtype="bfloat16",
                               attn_implementation="flash_attention_2").cuda()
    rng = np.random.default_rng(0)
    lens = [17, 64, 5]
    ids = torch.tensor(rng.integers(3, 32000, sum(lens))).unsqueeze(0).cuda()
    pos = torch.tensor(np.concatenate([np.arange(n) for n in lens])).unsqueeze(0).cuda()
    batch = PackedBatch(ids, pos, ids[0], torch.ones(sum(lens), device="cuda"), lens)
    with torch.no_grad():
        packed = packed_forward(model, batch).logits[0].float()
        starts = np.cumsum([0] + lens)
        separate = torch.cat([model(input_ids=ids[:, s:e], use_cache=False).logits[0].float() for s, e in zip(starts[:-1], starts[1:])])
    assert torch.allclose(packed, separate, atol=2e-2)  # bf16 kernels


def test_bf16_deepspeed_training_on_gpu_lowers_loss(tmp_path, mistral_tokenizer):
    from openchat_core.config import ModelConfig, TrainConfig
    from openchat_core.data.demo import DemoSizes, generate_demo_data
    from openchat_core.data.pretokenize import pretokenize_file
    from openchat_core.templates.conversation import TemplateSpec
    from openchat_core.training.launcher import run_training
    from openchat_core.training.trainer_config import TrainerConfig

    generate_demo_data(tmp_path / "demo", sizes=DemoSizes(train=600))
    from openchat_core.data.demo import MALFORMED_LINES

    rows = (tmp_path / "demo" / "train.jsonl").read_text().splitlines()
    lines = [json.loads(x) for x in rows if x not in MALFORMED_LINES and x.startswith('{"items": [{"role": "user"')]
    for c in lines:
        for m in c["items"]:
            m["weight"] = 0.0 if m["role"] == "user" else 1.0
    (tmp_path / "w.jsonl").write_text("".join(json.dumps(c) + "\n" for c in lines))
    pretokenize_file(tmp_path / "w.jsonl", tmp_path / "t.parquet", TemplateSpec.from_tokenizer("openchat_3.5", mistral_tokenizer), tokenizer_fingerprint="x")
    cfg = TrainerConfig(data=str(tmp_path / "t.parquet"), out_dir=str(tmp_path / "out"),
                        train=TrainConfig(epochs=3, batch_max_len=2048, lr=3e-3, zero_stage=2),
                        model=ModelConfig(base="preset:tiny-mistral", dtype="bfloat16"))
    run_training(cfg)
    log = [json.loads(x) for x in open(tmp_path / "out" / "train_log.jsonl")]
    first = np.mean([r["train/loss"] for r in log if r["epoch"] == 0])
    last = np.mean([r["train/loss"] for r in log if r["epoch"] == 2])
    assert last < 0.7 * first


def test_torch_varlen_packed_equals_per_sequence_with_gradients(mistral_tokenizer):
    """torch's built-in varlen attention (the choice on CUDA without flash-attn): packed == per-sequence, forward and backward.
    CPU counterpart: tests/unit/test_training_math.py (sdpa_varlen, the CPU path, checked the same way)."""
    import torch

    from openchat_core.training.data import PackedBatch
    from openchat_core.training.loss import packed_forward
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS
    from openchat_core.models.varlen_attention import register, torch_varlen_available

    assert torch_varlen_available(), "CUDA torch without torch.nn.attention.varlen: the 7B configs would fall back to sdpa_varlen"
    register("torch_varlen")
    model = build_random_model(MODEL_PRESETS["tiny-mistral"], mistral_tokenizer, seed=0, dtype="bfloat16",
                               attn_implementation="torch_varlen").cuda()
    reference = build_random_model(MODEL_PRESETS["tiny-mistral"], mistral_tokenizer, seed=0, dtype="bfloat16",
                                   attn_implementation="sdpa").cuda()
    rng = np.random.default_rng(0)
    lens = [17, 64, 5, 130]
    ids = torch.tensor(rng.integers(3, 32000, sum(lens))).unsqueeze(0).cuda()
    pos = torch.tensor(np.concatenate([np.arange(n) for n in lens])).unsqueeze(0).cuda()
    batch = PackedBatch(ids, pos, ids[0], torch.ones(sum(lens), device="cuda"), lens)
    packed = packed_forward(model, batch).logits[0].float()
    starts = np.cumsum([0] + lens)
    separate = torch.cat([reference(input_ids=ids[:, s:e], use_cache=False).logits[0].float() for s, e in zip(starts[:-1], starts[1:])])
    assert torch.allclose(packed, separate, atol=3e-2)  # bf16 kernels
    packed.sum().backward()
    separate.sum().backward()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        # bf16 gradients summed over ~200 tokens (the embedding's especially) differ elementwise by a few bf16 ulps between
        # kernels; the relative error of the whole gradient is what a wrong mask or a lost sequence boundary would blow up.
        error = float((a.grad.float() - b.grad.float()).norm() / b.grad.float().norm().clamp_min(1e-12))
        print(f"{name}: relative gradient error {error:.2e}")
        assert error < 2e-2, (name, error)
