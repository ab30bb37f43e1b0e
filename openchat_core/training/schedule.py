"""Learning rate: OpenChat's automatic rule and its cosine-with-warmup schedule."""

from __future__ import annotations

import math


def auto_learning_rate(model_type: str, batch_max_len: int, world_size: int, supervised_ratio: float) -> float:
    """OpenChat's rule (training_deepspeed/train.py): Llama's 3e-4 at 4M tokens, scaled by sqrt(supervised tokens per step).

    The per-family divisors are OpenChat's. The rule is calibrated for 7-8B models; tiny models need
    an explicit, much larger `lr` (the demo config sets one).
    """
    base_lr, base_tokens = 3e-4, 4_000_000
    name = model_type.lower()
    if "mistral" in name:
        base_lr /= 6.0
    elif "gemma" in name:
        base_lr /= 5.5
    elif "openchat_3.6" in name:
        base_lr /= 5.3
    supervised_tokens = batch_max_len * world_size * supervised_ratio
    return base_lr * math.sqrt(supervised_tokens / base_tokens)


def cosine_with_warmup(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at `step` (1-based, as OpenChat counts): linear warmup, then cosine down to `min_ratio`."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
