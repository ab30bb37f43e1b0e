"""Base models: load a local causal LM, build a preset, add missing special tokens.

Everything loads from local folders or from files inside PyPI wheels; a hub repo id is refused
with a message saying how to point at a local copy instead.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openchat_core.atomic import publish_folder
from openchat_core.models.presets import MODEL_PRESETS, ModelPreset
from openchat_core.templates.tokenizers import PRESET_PREFIX, cache_root, is_preset, load_tokenizer, smollm2_gguf_path

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_CACHE_VERSION = "2"  # v1 kept the GGUF `quantization_config`: models loaded from it could not be saved


def choose_packed_attention(cuda: bool, flash_attn: bool, torch_varlen: bool) -> tuple[str, str]:
    """(attention, why) for packed rows: flash-attn's varlen kernels when installed on CUDA; else torch's built-in
    varlen attention on CUDA (no extra package); else `sdpa_varlen` (sdpa per packed sequence; flex_attention has no
    CPU backward)."""
    if cuda and flash_attn:
        return "flash_attention_2", "CUDA with flash-attn installed"
    if cuda and torch_varlen:
        return "torch_varlen", "CUDA without flash-attn: torch.nn.attention.varlen (built into torch)"
    if cuda:
        return "sdpa_varlen", "CUDA without flash-attn or torch varlen attention: sdpa per packed sequence"
    return "sdpa_varlen", "no CUDA: sdpa per packed sequence"


def default_attn_implementation(training: bool = True) -> str:
    """The attention for packed training (see `choose_packed_attention`, logged once chosen); plain sdpa when not training."""
    import logging

    import torch
    from transformers.utils import is_flash_attn_2_available

    from openchat_core.models.varlen_attention import torch_varlen_available

    if not training:
        return "sdpa"
    name, why = choose_packed_attention(torch.cuda.is_available(), is_flash_attn_2_available(), torch_varlen_available())
    logging.getLogger(__name__).info("packed attention: %s (%s)", name, why)
    return name


def _prepare_attention(name: str) -> str:
    if name in ("sdpa_varlen", "torch_varlen"):
        from openchat_core.models.varlen_attention import register

        register(name)
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
    """Convert the SmolLM2 GGUF (Q4_1, dequantised to fp32) into a cached, plain Hugging Face folder, once.

    Plain means what a hub checkpoint holds: no `quantization_config` (the GGUF load leaves one in the
    config, and transformers then refuses to save every model loaded from the folder), a
    `generation_config.json` that stops at the template's end of turn, the tokenizer and its chat
    template. A cached folder that is not plain (made by an older version) is rebuilt.
    """
    target = cache_root() / "models" / f"smollm2-135m-v{SMOLLM2_CACHE_VERSION}"
    if is_plain_model_dir(target):
        return target
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from openchat_core.templates.model_types import get_model_type

    gguf = smollm2_gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are already dequantised
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    tokenizer = load_tokenizer("preset:smollm2")
    eos_ids = generation_eos_ids(tokenizer, get_model_type(MODEL_PRESETS["smollm2-135m"].model_type).eot)
    plain.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids,
                                               pad_token_id=tokenizer.pad_token_id)
    if target.exists() and not is_plain_model_dir(target):
        shutil.rmtree(target, ignore_errors=True)  # a stale folder from an older conversion (else it would stay)
    with publish_folder(target, shared_cache=True) as staging:
        plain.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        if not is_plain_model_dir(staging):
            raise RuntimeError(f"converting {gguf} gave a folder that is not a plain Hugging Face model ({staging})")
    return target


def is_plain_model_dir(path: Path) -> bool:
    """A complete, unquantised Hugging Face folder: config without `quantization_config`, generation config, tokenizer."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return ("quantization_config" not in config and (path / "generation_config.json").is_file()
            and (path / "tokenizer.json").is_file() and any(path.glob("*.safetensors")))


def check_saveable(model: PreTrainedModel, source: str | os.PathLike[str]) -> None:
    """Fail at load time, not at the first checkpoint after minutes of training, when transformers cannot save `model`.

    That is the case for models loaded with a non-serialisable quantizer, such as a folder whose
    config.json carries `quantization_config: {quant_method: gguf}`.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or quantizer.is_serializable():
        return
    method = quantizer.quantization_config.quant_method
    raise ValueError(
        f"{source}: the model loads as quantized with {getattr(method, 'value', method)} (config.json has a "
        f"`quantization_config`), and transformers cannot save such a model, so training could not write a checkpoint. "
        f"Use a plain (dequantised) Hugging Face folder: drop `quantization_config` from config.json if the weights are "
        f"already dequantised, or convert the model to a plain folder first.")


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
    check_saveable(model, path_or_preset)
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
