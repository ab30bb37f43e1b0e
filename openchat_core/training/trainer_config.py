"""Everything one training run needs, as one validated object (written to JSON for the launched processes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from openchat_core.models.settings import ModelConfig
from openchat_core.training.settings import TrainConfig


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    data: str = Field(description="pretokenized training Parquet (OpenChat's columns)")
    eval_data: str | None = Field(None, description="pretokenized held-out Parquet: eval/loss and eval/accuracy per epoch")
    out_dir: str = Field(description="checkpoints (ep_N), resumable state (state/), train_log.jsonl")
    train: TrainConfig = Field(default_factory=TrainConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    resume: bool = Field(False, description="continue from the last complete state in out_dir")
    publish_to: str | None = Field(None, description="fsspec URL (the storage root's train stage folder): every epoch checkpoint "
                                                     "and the resumable state are copied there, marker last")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="also save resumable state every N steps")
    tracking_uri: str | None = None
    mlflow_run_id: str | None = Field(None, description="log into this existing MLflow run")
    experiment: str | None = None
    run_name: str | None = None

    def order_digest(self) -> str:
        """What fixes the data order and schedule: resuming with a different value would not continue the same run."""
        t = self.train
        key = json.dumps({"data": Path(self.data).name, "epochs": t.epochs, "batch_max_len": t.batch_max_len, "seed": t.seed,
                          "num_procs": t.num_procs, "overlong": t.overlong, "drop_last": t.drop_last}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]
