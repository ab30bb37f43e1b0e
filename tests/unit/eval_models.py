"""Tiny random checkpoints for evaluation tests (real Mistral tokenizer, random Llama weights, no download).

`untied`: input and output embeddings are separate, so greedy outputs vary from token to token
(with tied embeddings a tiny random model mostly repeats the prompt's last token, which would make
engine comparisons trivially equal). Head size 32 (hidden 128 / 4 heads): supported by vLLM's CPU
attention, which accepts 32, 64, 80, 96, 112, 128, 160, 192, 224, 256 and 512.
"""

from __future__ import annotations

from pathlib import Path

from openchat_core.models.presets import ModelPreset

UNTIED_TINY_MISTRAL = ModelPreset(
    name="tiny-mistral-untied", tokenizer="mistral", model_type="openchat_3.5",
    description="tiny-mistral's shape with untied embeddings (varied greedy outputs)",
    architecture=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=False),
)


def save_tiny_checkpoint(out_dir: Path, preset: ModelPreset = UNTIED_TINY_MISTRAL, seed: int = 0) -> Path:
    from openchat_core.templates.tokenizers import load_tokenizer
    from openchat_core.models.checkpoint import save_checkpoint
    from openchat_core.models.model_factory import build_random_model

    tokenizer = load_tokenizer(f"preset:{preset.tokenizer}")
    model = build_random_model(preset, tokenizer, seed=seed, attn_implementation="sdpa")
    return save_checkpoint(out_dir, model, tokenizer, preset.model_type, {"epoch": 0, "preset": preset.name})
