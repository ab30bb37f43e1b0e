"""The registered model's MLflow flavor: a pyfunc whose artifact is the whole checkpoint folder.

The checkpoint folder is kept intact (config, safetensors, tokenizer + chat_template,
generation_config with EOT stop ids, openchat.json), so the downloaded artifact loads as-is in
transformers *and* vLLM; the pyfunc adds `predict` for MLflow-native consumers: chat messages in,
greedy replies out, rendered with the same template code as training.

`pip_requirements` are given explicitly: MLflow's inference would add torchvision for torch
models, which has no CPU build here (and the model does not need it).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

CHECKPOINT_ARTIFACT = "checkpoint"


def pip_requirements() -> list[str]:
    import importlib.metadata as md

    def pin(name: str) -> str:
        try:
            return f"{name}=={md.version(name)}"
        except md.PackageNotFoundError:
            return name

    return [pin("torch"), pin("transformers"), pin("tokenizers"), pin("safetensors"), pin("pydantic"), pin("openchat-pipeline")]


class OpenChatChatModel(mlflow.pyfunc.PythonModel):
    """predict([{"messages": [...], "condition": "", "system": ""}, ...]) -> replies (greedy, stops at EOT)."""

    def load_context(self, context: Any) -> None:
        from openchat_core.evaluation.transformers_generator import TransformersGenerator
        from openchat_core.models.checkpoint import checkpoint_template
        from openchat_core.models.checkpoint import read_checkpoint

        path = context.artifacts[CHECKPOINT_ARTIFACT]
        self.generator = TransformersGenerator.from_checkpoint(path)
        self.template = checkpoint_template(path, read_checkpoint(path).model_type, self.generator.tokenizer)

    def predict(self, context: Any, model_input: list[dict[str, Any]], params: dict[str, Any] | None = None) -> list[str]:
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        prompts = [self.template.prompt_ids(r["messages"], condition=r.get("condition") or "", system=r.get("system") or "") for r in rows]
        max_new_tokens = int((params or {}).get("max_new_tokens", 256))
        return [g.text for g in self.generator.generate(prompts, max_new_tokens)]
