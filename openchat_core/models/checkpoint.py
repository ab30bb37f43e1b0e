"""The per-epoch checkpoint format, written atomically.

A checkpoint is a Hugging Face model folder that transformers, vLLM and MLflow load as-is:
config.json + safetensors (or, for LoRA, a peft adapter on a named base: models/adapters.py), the tokenizer
with the model type's `chat_template` (model type `chat_template`: the tokenizer's own, with the condition
options in `openchat.json["template"]`), a
`generation_config.json` whose eos ids include the template's EOT (so `generate` and vLLM stop at
the end of a turn), and `openchat.json` (model type, epoch, config, data digest).

It is written to `<dir>.partial` and renamed when complete: a folder without the `.partial`
suffix and with `openchat.json` is, by construction, a complete checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openchat_core.atomic import publish_folder
from openchat_core.templates.model_types import ModelType, get_model_type

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

METADATA_FILE = "openchat.json"
ADAPTER_CONFIG = "adapter_config.json"  # a LoRA checkpoint (models/adapters.py): adapter weights on a named base
TRAINER_STATE_DIR = "trainer_state"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    model_type: str
    epoch: int | None
    metadata: dict[str, Any]


def save_checkpoint(out_dir: Path | str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_type: str,
                    metadata: dict[str, Any] | None = None, state_dict: dict[str, Any] | None = None) -> Path:
    """Write a complete, self-describing checkpoint folder atomically; returns its path."""
    from transformers import GenerationConfig

    from openchat_core.models.model_factory import generation_eos_ids

    mt = get_model_type(model_type)
    out = Path(out_dir)
    with publish_folder(out) as partial:
        model.save_pretrained(str(partial), state_dict=state_dict, safe_serialization=True)
        if mt.hf_chat_template is not None:  # model type chat_template keeps the tokenizer's own
            tokenizer.chat_template = mt.hf_chat_template
        tokenizer.save_pretrained(str(partial))
        eot = mt.eot or str(((metadata or {}).get("template") or {}).get("eot") or "")  # chat_template: the template's EOT
        eos_ids = generation_eos_ids(tokenizer, eot)
        GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids,
                         pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[-1],
                         do_sample=False).save_pretrained(str(partial))
        meta = {"model_type": mt.name, **(metadata or {})}
        (partial / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return out


def is_adapter_checkpoint(path: Path | str) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def weights_file(path: Path | str) -> Path:
    """The safetensors file holding a checkpoint's own weights (what identifies it: the adapter, or the full model)."""
    return Path(path) / ("adapter_model.safetensors" if is_adapter_checkpoint(path) else "model.safetensors")


def adapter_base_path(path: Path | str) -> Path:
    """The local base-model folder an adapter checkpoint was trained on (from openchat.json, else adapter_config.json).

    Raises FileNotFoundError naming the file when the base is not recorded or no longer exists.
    """
    p = Path(path)
    base = None
    meta_file = p / METADATA_FILE
    if meta_file.is_file():
        adapter = json.loads(meta_file.read_text()).get("adapter") or {}
        base = adapter.get("base_model")
    if not base:
        base = json.loads((p / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise FileNotFoundError(f"{p}: neither {METADATA_FILE} (adapter.base_model) nor {ADAPTER_CONFIG} (base_model_name_or_path) "
                                f"names the base model; add the base folder's path to one of them")
    base_path = Path(base)
    if not base_path.is_absolute():
        base_path = (p / base_path).resolve()
    if not (base_path / "config.json").is_file():
        raise FileNotFoundError(f"{p} is a LoRA adapter on base model {base}, which is not a local model folder (no config.json); "
                                f"restore the base there, or edit adapter.base_model in {meta_file}")
    return base_path


def model_config_dir(path: Path | str) -> Path:
    """The folder holding the architecture's config.json: the checkpoint itself, or an adapter's base."""
    return adapter_base_path(path) if is_adapter_checkpoint(path) else Path(path)


def is_complete_checkpoint(path: Path | str) -> bool:
    p = Path(path)
    has_weights = (p / "config.json").is_file() or is_adapter_checkpoint(p)
    return not p.name.endswith(".partial") and (p / METADATA_FILE).is_file() and has_weights


def read_checkpoint(path: Path | str) -> CheckpointInfo:
    p = Path(path)
    if not is_complete_checkpoint(p):
        raise FileNotFoundError(f"{p} is not a complete checkpoint (no {METADATA_FILE}, no config.json/{ADAPTER_CONFIG}, or still .partial)")
    meta = json.loads((p / METADATA_FILE).read_text())
    return CheckpointInfo(path=p, model_type=meta["model_type"], epoch=meta.get("epoch"), metadata=meta)


def checkpoint_model_type(model_dir: Path | str, model_type: str | None = None) -> ModelType:
    """A checkpoint's model type (prompt format, EOT): the one given, else the one its `openchat.json` records.

    The one place that answers this for evaluation, serving and the registry. Raises FileNotFoundError
    for a plain Hugging Face folder without `openchat.json` (pass `model_type`) and KeyError, listing
    the valid names, for an unknown type.
    """
    name = model_type
    if not name:
        meta_file = Path(model_dir) / METADATA_FILE
        try:
            meta = json.loads(meta_file.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{model_dir} has no {METADATA_FILE}, so its model type (prompt format, EOT) is unknown; "
                                    f"pass model_type=... (e.g. 'openchat_3.5'; --model-type on the CLI) for a plain "
                                    f"Hugging Face folder") from None
        except ValueError as e:
            raise ValueError(f"{meta_file} is not valid JSON ({e}); rewrite the checkpoint or pass model_type=...") from None
        name = meta.get("model_type") if isinstance(meta, dict) else None
        if not name:
            raise FileNotFoundError(f"{meta_file} records no model_type; pass model_type=... (e.g. 'openchat_3.5')")
    return get_model_type(str(name))


def context_limit(model_dir: Path | str, model_type: str) -> int:
    """Tokens a prompt plus its answer may span: the model type's max context (OpenChat's
    `model_max_context`), capped by the model's `max_position_embeddings` (vLLM refuses more)."""
    limit = get_model_type(model_type).max_context
    try:
        config = json.loads((model_config_dir(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return limit
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return min(limit, positions) if isinstance(positions, int) and positions > 0 else limit


def epoch_checkpoint_dir(root: Path | str, epoch: int) -> Path:
    return Path(root) / f"ep_{epoch}"


def list_epoch_checkpoints(root: Path | str) -> list[CheckpointInfo]:
    """Complete `ep_N` checkpoints under a training output folder, by epoch; partial ones are ignored."""
    found = []
    for child in sorted(Path(root).glob("ep_*")):
        if is_complete_checkpoint(child):
            found.append(read_checkpoint(child))
    return sorted(found, key=lambda c: c.epoch if c.epoch is not None else -1)


def checkpoint_template(model_dir: Path | str, model_type: str, tokenizer: PreTrainedTokenizerBase) -> Any:
    """The template a checkpoint was trained with: its model type, plus the condition options in `openchat.json`
    (model type `chat_template`); a folder without `openchat.json` gets the default options."""
    from openchat_core.templates.specs import load_template, options_from_metadata

    meta_file = Path(model_dir) / METADATA_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return load_template(model_type, tokenizer, options_from_metadata(meta), name=str(model_dir))
