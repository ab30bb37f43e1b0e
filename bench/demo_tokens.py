"""The demo conversations pretokenized for a model preset: `pretokenized_demo(root, preset)`, shared by the benchmarks
that train on real text (bench/lora_bench.py, bench/trl_peer.py).

C-RLFT weights: GPT4 Correct = 1.0, GPT3 = 0.1. The template is the preset's own model type, on the preset's tokenizer.
"""

from __future__ import annotations

from pathlib import Path


def pretokenized_demo(root: Path, preset: str = "smollm2-135m", train: int = 1500, eval_per_task: int = 8) -> tuple[Path, Path]:
    """Generate, validate, weight and pretokenize the demo data under `root`; returns (train.parquet, eval.parquet)."""
    from openchat_core.data.demo import DemoSizes, generate_demo_data
    from openchat_core.data.pretokenize import pretokenize_file
    from openchat_core.data.validate import validate_files
    from openchat_core.data.weights import WeightPolicy, assign_weights_file
    from openchat_core.models.presets import MODEL_PRESETS
    from openchat_core.templates.conversation import TemplateSpec
    from openchat_core.templates.tokenizers import load_tokenizer, tokenizer_fingerprint

    spec_preset = MODEL_PRESETS[preset]
    tokenizer = load_tokenizer("preset:" + spec_preset.tokenizer)
    generate_demo_data(root / "demo", sizes=DemoSizes(train=train, eval_per_task=eval_per_task))
    spec = TemplateSpec.from_tokenizer(spec_preset.model_type, tokenizer)
    policy = WeightPolicy(condition_weights={"GPT4 Correct": 1.0, "GPT3": 0.1})
    for split in ("train", "eval"):
        validate_files([root / "demo" / f"{split}.jsonl"], root / split / "v")
        assign_weights_file(root / split / "v" / "conversations.parquet", root / split / "w", policy)
        pretokenize_file(root / split / "w" / "weighted.parquet", root / f"{split}.parquet", spec,
                         tokenizer_fingerprint=tokenizer_fingerprint(tokenizer))
    return root / "train.parquet", root / "eval.parquet"
