"""Base models: load a local causal LM, build a preset, add missing special tokens.

Everything loads from local folders or from files inside PyPI wheels; a hub repo id is refused
with a message saying how to point at a local copy instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openchat_core.atomic import publish_folder
from openchat_core.models.presets import MODEL_PRESETS, ModelPreset
from openchat_core.templates.tokenizers import PRESET_PREFIX, cache_root, is_preset, load_tokenizer, smollm2_gguf_path

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_CACHE_VERSION = "1"


def default_attn_implementation(training: bool = True) -> str:
    """The attention for packed training: flash_attention_2 on CUDA when installed (varlen kernels); elsewhere our
    `sdpa_varlen` (sdpa per packed sequence; flex_attention has no CPU backward). Plain sdpa when not training."""
    import torch
    from transformers.utils import is_flash_attn_2_available

    if torch.cuda.is_available() and is_flash_attn_2_available():
        return "flash_attention_2"
    return "sdpa_varlen" if training else "sdpa"


def _prepare_attention(name: str) -> str:
    if name == "sdpa_varlen":
        from openchat_core.models.varlen_attention import register

        register()
    return name


def resolve_dtype(name: str) -> torch.dtype:
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(table)}")
    return table[name]


def preset_of(path_or_preset: str | os.PathLike[str]) -> ModelPreset | None:
    if not is_preset(path_or_preset):
        return None
    name = str(path_or_preset)[len(PRESET_PREFIX):]
    if name not in MODEL_PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESET_PREFIX + n for n in sorted(MODEL_PRESETS))}")
    return MODEL_PRESETS[name]


def _check_local_folder(path: Path) -> None:
    if not path.is_dir():
        hint = " It looks like a hub repo id; this project never downloads weights: download it elsewhere and pass the folder." if "/" in str(path) and not str(path).startswith(("/", ".")) else ""
        raise FileNotFoundError(f"model path {str(path)!r} is not a local folder.{hint} Presets: "
                                + ", ".join(PRESET_PREFIX + n for n in sorted(MODEL_PRESETS)))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")


def build_random_model(preset: ModelPreset, tokenizer: PreTrainedTokenizerBase, seed: int = 0,
                       dtype: str = "float32", attn_implementation: str | None = None) -> PreTrainedModel:
    """A stock Llama with the preset's shape, random weights (seeded), vocabulary sized to the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **preset.architecture)
    torch.manual_seed(seed)
    attn = _prepare_attention(attn_implementation or default_attn_implementation())
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=resolve_dtype(dtype))


def smollm2_model_dir() -> Path:
    """Convert the SmolLM2 GGUF (Q4_1, dequantised to fp32) into a cached Hugging Face folder, once."""
    target = cache_root() / "models" / f"smollm2-135m-v{SMOLLM2_CACHE_VERSION}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)  # transformers refuses to save GGUF-loaded models
    plain.load_state_dict(loaded.state_dict())
    tokenizer = load_tokenizer("preset:smollm2")
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    with publish_folder(target, shared_cache=True) as staging:
        plain.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
    return target


def local_model_dir(path_or_preset: str | os.PathLike[str]) -> Path | None:
    """The local Hugging Face folder a base model loads from; None for a random preset (it exists only in memory)."""
    preset = preset_of(path_or_preset)
    if preset is not None:
        return None if preset.source == "random" else smollm2_model_dir()
    return Path(path_or_preset).expanduser().resolve()


def load_base_model(path_or_preset: str | os.PathLike[str], *, seed: int = 0, dtype: str = "float32",
                    attn_implementation: str | None = None, packed: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from a local folder or a `preset:NAME` (tiny random models, SmolLM2).

    `packed=True` (training, held-out loss) picks the packed-row attention by default; otherwise sdpa
    (generation, padded batches).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    attn = _prepare_attention(attn_implementation or default_attn_implementation(training=packed))
    preset = preset_of(path_or_preset)
    if preset is not None and preset.source == "random":
        tokenizer = load_tokenizer(PRESET_PREFIX + preset.tokenizer)
        return build_random_model(preset, tokenizer, seed=seed, dtype=dtype, attn_implementation=attn), tokenizer
    path = smollm2_model_dir() if preset is not None else Path(path_or_preset).expanduser()
    _check_local_folder(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(dtype), attn_implementation=attn, local_files_only=True)
    return model, load_tokenizer(path)


def add_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> list[str]:
    """Add missing special tokens and initialise their embeddings to the mean of the existing ones.

    This is what OpenChat's `mistral_add_tokens.py` / `init_special_embedding_llama3.py` do: a new
    token starts as an "average" token instead of random noise, so it does not destabilise training.
    Returns the tokens that were actually added.
    """
    import torch

    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if not missing:
        return []
    old_size = model.get_input_embeddings().weight.shape[0]
    tokenizer.add_special_tokens({"additional_special_tokens": missing})
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for emb in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None}.values():
            mean = emb.weight[:old_size].mean(dim=0)
            for token in missing:
                emb.weight[tokenizer.convert_tokens_to_ids(token)] = mean
    return missing


def generation_eos_ids(tokenizer: PreTrainedTokenizerBase, eot: str) -> list[int]:
    """Stop ids for generate/vLLM: the template's EOT first, then the tokenizer's EOS."""
    ids = list(tokenizer(eot, add_special_tokens=False).input_ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
