"""Generation engines behind one small interface, and the rules both engines share.

`Generator.generate(prompts, max_new_tokens)` takes prompts as token ids (built by the template
code, never re-tokenized by an engine) and returns, per prompt, a `Generation`: the generated
ids up to and including the first stop id, why it ended, and the text.

Shared rules, so the engines are interchangeable and comparable:
- greedy decoding; stop only at the model type's EOT ids (OpenChat's `stop_token_ids=eot_tokens_`
  with `ignore_eos=True`: the tokenizer's EOS does not end an answer);
- `token_ids` include the stop id when `finish_reason == "stop"` (what vLLM returns); nothing after it;
- `text` is decoded here, in this process, from the ids before the stop id with
  `skip_special_tokens=True`, by the same function for both engines, so identical ids always
  give identical text (vLLM's incremental detokenizer runs under another transformers version).

Engines: `TransformersGenerator` (in-process, `transformers_generator.py`) and `VLLMGenerator` (vLLM's
offline engine in the serving environment, through a subprocess worker, `vllm_generator.py`);
`generators.make_generator` picks one. The engines import this module, never the other way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason


@runtime_checkable
class Generator(Protocol):
    """Greedy generation from token-id prompts; one `Generation` per prompt, in prompt order."""

    name: str

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[Generation]: ...

    def describe(self) -> dict[str, Any]:
        """Engine name, versions and settings, recorded with results."""
        ...


def cut_at_stop(token_ids: Sequence[int], stop_token_ids: Sequence[int]) -> tuple[tuple[int, ...], FinishReason]:
    """Ids up to and including the first stop id ("stop"), or all of them ("length")."""
    stops = set(stop_token_ids)
    for i, token in enumerate(token_ids):
        if token in stops:
            return tuple(token_ids[: i + 1]), "stop"
    return tuple(token_ids), "length"


def decode_generation(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int], finish_reason: FinishReason) -> str:
    """The text of a generation: the ids before the stop id, special tokens skipped (vLLM's default)."""
    ids = list(token_ids[:-1] if finish_reason == "stop" else token_ids)
    return tokenizer.decode(ids, skip_special_tokens=True)


def check_generate_args(prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; prompts are token ids from ConversationTemplate.prompt_ids")


def stop_token_ids_for(tokenizer: PreTrainedTokenizerBase, model_type: str) -> list[int]:
    """The model type's EOT ids in this tokenizer: what OpenChat stops on (`conv_template.eot_tokens_`)."""
    from openchat_core.templates.specs import template_spec

    return list(template_spec(model_type, tokenizer).eot_ids)
