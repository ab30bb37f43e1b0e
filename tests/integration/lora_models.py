"""Two tiny LoRA adapters on one tiny-mistral base, with deterministic, clearly different weights, and peft's greedy answers.

The adapters are built with peft (random B factors from fixed seeds), not trained, so the tests that
serve or evaluate them run in seconds; peft's own greedy generation is the reference every engine
must reproduce (head_dim 32: vLLM's CPU attention supports it).
"""

from __future__ import annotations

from pathlib import Path

BASE_SEED = 0
ADAPTERS = {"a": (1, 4), "b": (2, 8)}  # name: (seed, rank)


def build_lora_models(root: Path) -> dict[str, Path]:
    """`root/base` (a full checkpoint) and `root/a`, `root/b` (adapter checkpoints on it); returns their paths."""
    import torch

    from openchat_core.models.adapters import apply_lora
    from openchat_core.models.checkpoint import save_checkpoint
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS
    from openchat_core.templates.tokenizers import load_tokenizer
    from openchat_core.training.settings import TrainConfig

    tokenizer = load_tokenizer("preset:mistral")
    preset = MODEL_PRESETS["tiny-mistral"]
    out = {"base": save_checkpoint(root / "base", build_random_model(preset, tokenizer, seed=BASE_SEED), tokenizer,
                                   "openchat_3.5", {"epoch": 0})}
    for name, (seed, rank) in ADAPTERS.items():
        model = build_random_model(preset, tokenizer, seed=BASE_SEED, attn_implementation="sdpa")
        torch.manual_seed(seed)
        model = apply_lora(model, TrainConfig(adapter="lora", lora_r=rank), base_path=out["base"], init_lora_weights=False)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0, 0.5)  # large enough that every adapter's greedy answer differs from the base's
        out[name] = save_checkpoint(root / name, model, tokenizer, "openchat_3.5", {
            "epoch": 0, "adapter": {"type": "lora", "base_model": str(out["base"]), "r": rank, "target_modules": "all-linear"}})
    return out


def peft_greedy(path: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """The transformers engine's greedy answers (peft for adapters), cut at the checkpoint's stop ids."""
    from openchat_core.evaluation.generators import make_generator

    generator = make_generator("transformers", path)
    return [g.token_ids for g in generator.generate(prompts, max_new_tokens)]
