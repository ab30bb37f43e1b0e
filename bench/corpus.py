"""A synthetic but realistic chat corpus for data-stage benchmarks (deterministic, no downloads).

Conversation lengths follow a lognormal in tokens (median ~100, long tail clipped at 8192, a few
percent over 1k), split over 1-4 exchanges; text mixes English-like words, numbers, punctuation,
code lines, a little CJK and emoji, so tokenizers do representative work. Conditions and weights
look like a C-RLFT dataset (GPT4 1.0 / GPT3 0.1), so the files feed pretokenization directly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

_SYLLABLES = ["ka", "to", "ri", "en", "mo", "sha", "lu", "tion", "der", "in", "pre", "com", "ly", "ate", "ver", "al", "ex",
              "ble", "ment", "ing", "ous", "ter", "st", "an", "ro", "qui", "be", "na", "de", "sp"]
_EXTRAS = ["1,024", "3.14", "2026", "(see above)", "e.g.", "—", "“quoted”", "你好世界", "データ", "🚀", "✅", "→"]
_CODE = ["def f(x):", "    return x * 2", "for i in range(10):", "    print(i)", "import numpy as np", "}", "if (a && b) {"]
TOKENS_PER_WORD = 2.7  # calibrated: gives a median of ~100 Mistral tokens per conversation, role prefixes included


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))


def _text(rng: random.Random, n_words: int) -> str:
    parts = []
    for i in range(max(1, n_words)):
        r = rng.random()
        if r < 0.04:
            parts.append(rng.choice(_EXTRAS))
        elif r < 0.06:
            parts.append("\n" + rng.choice(_CODE) + "\n")
        else:
            parts.append(_word(rng) + ("." if rng.random() < 0.08 else ",") if rng.random() < 0.15 else _word(rng))
    return " ".join(parts)


def target_lengths(n: int, seed: int = 0, median: float = 100.0, sigma: float = 1.0, cap: int = 8192,
                   long_share: float = 0.005) -> np.ndarray:
    """Lognormal lengths plus a small share of long documents (2k-8k) so the tail reaches the cap."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), sigma, n), 16, cap)
    long = rng.random(n) < long_share
    lengths[long] = rng.uniform(2048, cap, int(long.sum()))
    return lengths.astype(np.int64)


def write_corpus(path: Path | str, n: int, seed: int = 0) -> Path:
    """Write `n` weighted conversations to a JSONL file; returns its path."""
    rng = random.Random(seed)
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for length in target_lengths(n, seed):
            exchanges = rng.randint(1, 4)
            words = max(2, int(length / TOKENS_PER_WORD))
            per_turn = max(1, words // (2 * exchanges))
            condition = "GPT4" if rng.random() < 0.3 else "GPT3"
            weight = 1.0 if condition == "GPT4" else 0.1
            items = []
            for _ in range(exchanges):
                items.append({"role": "user", "content": _text(rng, max(1, per_turn // 2)), "weight": 0.0})
                items.append({"role": "assistant", "content": _text(rng, per_turn * 3 // 2), "weight": weight})
            conv = {"items": items, "condition": condition, "system": "You are a helpful assistant." if rng.random() < 0.2 else ""}
            f.write(json.dumps(conv, ensure_ascii=False) + "\n")
    return path
