"""Greedy generation with transformers' `generate`, batched with left padding, in the pipeline environment.

Used when vLLM is absent, and for the per-epoch evaluation of a model already in memory
(`TransformersGenerator(model, tokenizer, stop_ids)` needs no save/reload). Prompts are sorted by
length and batched, left-padded with an attention mask, so each batch wastes little compute and
every prompt sees the same positions it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openchat_core.evaluation.generation import (
    Generation,
    check_generate_args,
    cut_at_stop,
    decode_generation,
    stop_token_ids_for,
)
from openchat_core.models.checkpoint import checkpoint_model_type

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class TransformersGenerator:
    """`Generator` on an in-process transformers causal LM (greedy, stops at `stop_token_ids`)."""

    name = "transformers"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, stop_token_ids: Sequence[int], *,
                 batch_size: int = 8, model_path: str | None = None) -> None:
        if not stop_token_ids:
            raise ValueError("stop_token_ids must not be empty: generation would only end at max_new_tokens. "
                             "Use stop_token_ids_for(tokenizer, model_type) for the template's EOT ids")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.stop_token_ids = [int(t) for t in stop_token_ids]
        self.batch_size = batch_size
        self.model_path = model_path
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.stop_token_ids[0]

    @classmethod
    def from_checkpoint(cls, model_dir: Path | str, *, stop_token_ids: Sequence[int] | None = None,
                        model_type: str | None = None, dtype: str = "float32", batch_size: int = 8,
                        attn_implementation: str | None = None) -> TransformersGenerator:
        """Load a checkpoint folder; stop ids default to its model type's EOT."""
        from openchat_core.models.adapters import load_model

        model, tokenizer = load_model(str(model_dir), dtype=dtype, attn_implementation=attn_implementation)  # peft for adapters
        if not stop_token_ids:
            stop_token_ids = stop_token_ids_for(tokenizer, checkpoint_model_type(model_dir, model_type).name)
        return cls(model, tokenizer, list(stop_token_ids), batch_size=batch_size, model_path=str(model_dir))

    def describe(self) -> dict[str, Any]:
        import torch
        import transformers

        return {"engine": self.name, "transformers": transformers.__version__, "torch": torch.__version__,
                "dtype": str(self.model.dtype).removeprefix("torch."), "batch_size": self.batch_size,
                "stop_token_ids": self.stop_token_ids, "model_path": self.model_path}

    def _generation_config(self, max_new_tokens: int):
        from transformers import GenerationConfig

        # A fresh config: the checkpoint's generation_config also lists the tokenizer's EOS, which
        # OpenChat's evaluation ignores (vLLM ignore_eos=True); eos_token_id here is the stop set.
        return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                eos_token_id=list(self.stop_token_ids), pad_token_id=self.pad_token_id)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[Generation]:
        import torch

        check_generate_args(prompts, max_new_tokens)
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
        results: dict[int, Generation] = {}
        config = self._generation_config(max_new_tokens)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    batch = order[start: start + self.batch_size]
                    width = max(len(prompts[i]) for i in batch)
                    input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
                    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                    for row, i in enumerate(batch):
                        n = len(prompts[i])
                        input_ids[row, width - n:] = torch.tensor(list(prompts[i]), dtype=torch.long)
                        attention_mask[row, width - n:] = 1
                    out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                              generation_config=config)
                    for row, i in enumerate(batch):
                        ids, reason = cut_at_stop(out[row, width:].tolist(), self.stop_token_ids)
                        results[i] = Generation(decode_generation(self.tokenizer, ids, reason), ids, reason)
        finally:
            self.model.train(was_training)
        return [results[i] for i in range(len(prompts))]
