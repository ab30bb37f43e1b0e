"""`train:` settings: optimisation, batching and checkpointing of one run (beside the trainer that reads them)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from openchat_core.section import Section


class TrainConfig(Section):
    epochs: int = Field(3, ge=1)
    batch_max_len: int = Field(2048, ge=64, description="tokens per rank per step (multipack capacity)")
    lr: float | None = Field(None, gt=0, description="peak learning rate; default: OpenChat's automatic rule")
    lr_min_ratio: float = Field(0.1, ge=0, le=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-5, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    zero_stage: Literal[0, 1, 2, 3] = 2
    num_procs: int = Field(1, ge=1, description="processes (GPUs) per node")
    hostfile: str | None = Field(None, description="DeepSpeed hostfile for multi-node runs")
    seed: int = 42
    save_every: int = Field(1, ge=1, description="save a checkpoint every N epochs (the last epoch always)")
    gradient_checkpointing: bool = False
    overlong: Literal["error", "truncate"] = Field("error", description="sequences longer than batch_max_len")
    drop_last: bool = Field(True, description="leave out an epoch's incomplete last step (fewer bins than ranks; a random "
                                              "sample, ~0.7% of tokens at 81920 x 8) as OpenChat does, when that raises packing "
                                              "efficiency; never with one rank. False keeps every sequence")

    adapter: Literal["none", "lora"] = Field("none", description="none: full fine-tuning; lora: train LoRA adapters (peft) on a frozen base")
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    lora_target_modules: str = Field("all-linear", description="comma-separated module names to adapt (e.g. q_proj,v_proj), "
                                                                "or all-linear (every linear layer but the LM head)")

    @field_validator("lora_target_modules")
    @classmethod
    def _target_modules_listed(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        if not names:
            raise ValueError("train.lora_target_modules is empty: name modules (e.g. q_proj,v_proj) or use all-linear")
        return ",".join(names)

    @model_validator(mode="after")
    def _capacity_is_multiple_of_64(self) -> TrainConfig:
        if self.batch_max_len % 64:
            raise ValueError(f"train.batch_max_len={self.batch_max_len} must be a multiple of 64 "
                             f"(OpenChat pads batches to 64 tokens); try {math.ceil(self.batch_max_len / 64) * 64}")
        return self
