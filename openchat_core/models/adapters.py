"""LoRA adapters (peft): wrap a base model for training, and load or merge an adapter checkpoint.

An adapter checkpoint is an epoch folder like a full one (tokenizer + chat template,
`generation_config.json`, `openchat.json`) whose weights are `adapter_config.json` +
`adapter_model.safetensors` instead of `config.json` + `model.safetensors`. Its `openchat.json`
names the base as a local Hugging Face folder (`adapter.base_model`), which is also the adapter
config's `base_model_name_or_path`, so peft, transformers and vLLM find the same base. A random
preset base has no folder of its own, so the trainer writes it once beside the checkpoints.

Light module: torch/peft are imported inside the functions that need them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openchat_core.models.checkpoint import (
    ADAPTER_CONFIG,
    adapter_base_path,
    is_adapter_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from openchat_core.training.settings import TrainConfig

BASE_MODEL_DIR = "base_model"  # beside the ep_N folders, when the base is not already a local folder


def embedding_module_names(model: PreTrainedModel) -> list[str]:
    """Leaf names (e.g. embed_tokens, lm_head) of the input and output embeddings: peft's `modules_to_save` for new tokens."""
    wanted = {id(m) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if id(module) in wanted})


def apply_lora(model: PreTrainedModel, train: TrainConfig, *, base_path: Path | str, train_embeddings: bool = False,
               init_lora_weights: bool = True) -> Any:
    """Freeze `model` and add LoRA adapters as `train` says; returns the peft model (only adapter weights train).

    `train_embeddings` (special tokens were added to the vocabulary) also trains full copies of the
    embeddings and LM head (`modules_to_save`), since the new tokens' rows start as the mean and must learn.
    `init_lora_weights=False` gives B a random start (tests: gradients reach both factors).
    """
    from peft import LoraConfig, get_peft_model

    targets = train.lora_target_modules
    config = LoraConfig(
        r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout, task_type="CAUSAL_LM", bias="none",
        target_modules=targets if targets == "all-linear" else targets.split(","),
        modules_to_save=embedding_module_names(model) if train_embeddings else None,
        ensure_weight_tying=bool(train_embeddings and getattr(model.config, "tie_word_embeddings", False)),
        init_lora_weights=init_lora_weights,
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        raise ValueError(f"train.lora_target_modules={targets!r}: {e}; name modules of this model (e.g. q_proj,v_proj) or use all-linear") from None
    peft_model.peft_config["default"].base_model_name_or_path = str(base_path)
    return peft_model


def trainable_parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_adapter_model(path: Path | str, *, dtype: str = "float32", attn_implementation: str | None = None,
                       packed: bool = False) -> tuple[Any, PreTrainedTokenizerBase]:
    """The base model with the adapter applied (peft, eval mode), and the checkpoint's own tokenizer (with its chat template)."""
    from peft import PeftModel

    from openchat_core.models.model_factory import load_base_model
    from openchat_core.templates.tokenizers import load_tokenizer

    from transformers import GenerationConfig

    base, _ = load_base_model(adapter_base_path(path), dtype=dtype, attn_implementation=attn_implementation, packed=packed)
    base.generation_config = GenerationConfig.from_pretrained(str(path))  # the checkpoint's: its eos ids include the EOT
    model = PeftModel.from_pretrained(base, str(path), is_trainable=False)
    model.eval()
    return model, load_tokenizer(Path(path))


def load_model(path: Path | str, **kwargs: Any) -> tuple[Any, PreTrainedTokenizerBase]:
    """A checkpoint's model and tokenizer, whether it holds full weights or a LoRA adapter."""
    from openchat_core.models.model_factory import load_base_model

    return load_adapter_model(path, **kwargs) if is_adapter_checkpoint(path) else load_base_model(path, **kwargs)


def merge_adapter(path: Path | str, out_dir: Path | str) -> Path:
    """Write a full checkpoint (base + adapter folded into the weights) of an adapter checkpoint; returns its path."""

    info = read_checkpoint(path)
    model, tokenizer = load_adapter_model(path)
    merged = model.merge_and_unload()
    meta = {k: v for k, v in info.metadata.items() if k not in ("model_type", "adapter")}
    meta["merged_from"] = {"adapter": str(Path(path).resolve()), **(info.metadata.get("adapter") or {})}
    return save_checkpoint(out_dir, merged, tokenizer, info.model_type, meta)


@dataclass(frozen=True)
class AdapterInfo:
    """What a server needs to know about an adapter checkpoint before it asks an engine to apply it per request."""

    path: Path
    base: Path                         # the resolved local base-model folder
    rank: int                          # the largest rank of any module (r, or a rank_pattern override)
    modules_to_save: tuple[str, ...]   # full copies of modules (embeddings / LM head when special tokens were added)


def adapter_info(path: Path | str) -> AdapterInfo:
    """Read an adapter checkpoint's base, rank and full-module copies; FileNotFoundError/ValueError name the file."""
    p = Path(path).expanduser().resolve()
    config_file = p / ADAPTER_CONFIG
    try:
        config = json.loads(config_file.read_text())
        ranks = [int(config["r"]), *(int(v) for v in (config.get("rank_pattern") or {}).values())]
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} is not a LoRA adapter checkpoint (no {ADAPTER_CONFIG})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config_file}: cannot read the adapter's rank (field r): {e}") from None
    return AdapterInfo(p, adapter_base_path(p).resolve(), max(ranks), tuple(config.get("modules_to_save") or ()))


def per_request_lora_problem(info: AdapterInfo) -> str | None:
    """Why an engine that applies LoRA per request on a shared base (vLLM) cannot serve this adapter, or None.

    Such engines add low-rank deltas to a frozen base; an adapter that also replaces whole modules
    (`modules_to_save`: the embeddings and LM head, trained when special tokens were added) changes
    the base itself, which vLLM does not support for causal LMs.
    """
    if info.modules_to_save:
        return (f"{info.path} replaces whole modules ({', '.join(info.modules_to_save)}: modules_to_save, trained because "
                f"special tokens were added), which vLLM's per-request LoRA cannot apply; register it merged "
                f"(registry.merge_adapter: true) or serve it with --engine transformers")
    return None


def round_up_rank(rank: int, supported: Iterable[int]) -> int:
    """The smallest supported max-LoRA-rank >= `rank` (vLLM accepts only a fixed set); ValueError if none is."""
    fitting = sorted(r for r in supported if r >= rank)
    if not fitting:
        raise ValueError(f"LoRA rank {rank} is above the largest rank this engine supports ({max(supported)})")
    return fitting[0]


def vllm_max_lora_rank(rank: int) -> int:
    """`rank` rounded up to a `max_lora_rank` vLLM accepts (`vllm.config.lora.MaxLoRARanks`); serving env only."""
    from typing import get_args

    from vllm.config.lora import MaxLoRARanks

    return round_up_rank(rank, get_args(MaxLoRARanks))
