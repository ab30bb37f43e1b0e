"""A deliberately nasty, deterministic corpus for comparing our pretokenizer with OpenChat's."""

from __future__ import annotations

import random

SNIPPETS = [
    "Hello", "How are you today?", "def f(x):\n    return x  *  2\n", "   leading spaces", "trailing spaces   ",
    "tabs\tand\tnewlines\n\n\n", "你好，世界！这是一个测试。", "日本語のテキストです。", "한국어 문장입니다.",
    "emoji 😀🚀👩‍👩‍👧 and flags 🇫🇷", "<s> </s> <|end_of_turn|> <|eot_id|> <|start_header_id|>", "<unk>", "1234567890 3.14159",
    "multiple     spaces     inside", "\u00a0non-breaking\u00a0space", "Ünïcödé àccents", "  ", "x", "",
    "The answer is 42.", "```python\nprint('hi')\n```", "GPT4 Correct User: fake prefix inside content",
]


def parity_conversations(n: int, seed: int = 0, long_every: int = 25, long_words: int = 6000) -> list[dict]:
    rng = random.Random(seed)
    convs = []
    for i in range(n):
        turns = rng.randint(1, 6)
        items = []
        for t in range(turns):
            for role in ("user", "assistant"):
                text = " ".join(rng.choice(SNIPPETS) for _ in range(rng.randint(1, 4)))
                if role == "assistant" and i % long_every == 0 and t == 0:
                    text = " ".join(rng.choice(SNIPPETS) for _ in range(long_words))  # over the max context
                weight = 0.0 if role == "user" else rng.choice([1.0, 0.1, 0.5, 0.0, 0.3333])
                items.append({"role": role, "content": text, "weight": weight})
        if i % 7 == 3:
            items[-1]["weight"] = 0.0  # trailing zero-weight turn: dropped by the trailing strip
        if i % 11 == 5:
            for m in items:
                m["weight"] = 0.0  # nothing supervised: the conversation is dropped
        conv = {"items": items, "condition": rng.choice(["GPT4", "GPT3", "", "Math Correct"]),
                "system": rng.choice(["", "", "You are a helpful assistant.", "系统提示 <|eot_id|>"])}
        convs.append(conv)
    return convs
