"""The `chat_template` model type: C-RLFT on a model's own Jinja chat template.

OpenChat's model types write the C-RLFT condition into the role prefixes ("GPT4 Correct User:").
A model fine-tuned from an existing chat model (ChatML, Llama 3 instruct, Mistral instruct) should
keep the template it already knows, so here conversations are rendered with the tokenizer's own
`chat_template`, exactly as `tokenizer.apply_chat_template` renders them, and the condition is
written into a message the template renders:

- `placement: system` (default): a system message whose first line is
  `condition_format.format(condition=...)` (default `"Condition: {condition}"`); the conversation's
  own system prompt, if any, follows on the next line.
- `placement: user`: the condition line and a blank line are put before the first user message
  (for templates without a system role, such as Mistral instruct).

Training and serving call the same `place_condition`, so the prompt ids of a conversation at
training time are the ids `apply_chat_template(placed_messages, add_generation_prompt=True)` gives
at serving time. A conversation without a condition gets no condition line; at inference an empty
condition means `inference_condition`.

Supervised tokens are exactly each assistant turn: from the end of the rendered prompt before it
(`add_generation_prompt=True`) up to and including the template's end-of-turn token, found by
rendering prefixes of the conversation and checking that each prefix's ids are a prefix of the
whole conversation's ids. Text the template writes after the EOT (ChatML's newline) is not
supervised. Templates that are not prefix-stable, have no generation prompt, or do not close
assistant turns with a special token are refused with the reason.

Like `apply_chat_template`, special-token text inside messages is tokenized as special tokens.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from openchat_core.templates.conversation import MissingWeightError, conversation_fields
from openchat_core.templates.model_types import CHAT_TEMPLATE_INFERENCE_CONDITION, MODEL_TYPES, ModelType

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHAT_TEMPLATE_TYPE = "chat_template"
Placement = Literal["system", "user"]
_PROBE_USER = "Probe user message 1"
_PROBE_ASSISTANT = "Probe assistant reply 2"
_PROBE_CONDITION = "Probe condition 3"
_PROBE_USER_2 = "Probe user message 4"


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used for C-RLFT training (see the message for why and how to fix)."""


class ConversationRenderError(ValueError):
    """One conversation cannot be rendered into supervised spans (e.g. the template is not prefix-stable for it)."""

    def __init__(self, conversation_index: int, message: str) -> None:
        super().__init__(message)
        self.conversation_index = conversation_index


@dataclass(frozen=True)
class ChatTemplateOptions:
    """Where and how the C-RLFT condition is rendered; stored with the tokens and the checkpoint."""

    condition_format: str = "Condition: {condition}"
    placement: Placement = "system"
    inference_condition: str = CHAT_TEMPLATE_INFERENCE_CONDITION

    def __post_init__(self) -> None:
        fields = [name for _, name, _, _ in string.Formatter().parse(self.condition_format) if name is not None]
        if fields != ["condition"]:
            raise ValueError(f"condition_format {self.condition_format!r} must contain {{condition}} exactly once and no "
                             f"other field, e.g. 'Condition: {{condition}}'")
        if self.placement not in ("system", "user"):
            raise ValueError(f"condition placement {self.placement!r} must be 'system' or 'user'")

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ChatTemplateOptions:
        return cls(**{k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    def place_condition(self, items: Sequence[Mapping[str, Any]], condition: str, system: str) -> list[dict[str, str]]:
        """The chat messages the template renders: conversation items plus the condition and system prompt."""
        line = self.condition_format.format(condition=condition) if condition else ""
        messages = [{"role": m["role"], "content": m["content"]} for m in items]
        if self.placement == "system":
            text = "\n".join(t for t in (line, system) if t)
            return ([{"role": "system", "content": text}] if text else []) + messages
        if line:
            first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if first_user is None:
                raise ValueError("condition placement 'user' needs a user message to carry the condition")
            messages[first_user]["content"] = f"{line}\n\n{messages[first_user]['content']}"
        return ([{"role": "system", "content": system}] if system else []) + messages


def _template_text(tokenizer: PreTrainedTokenizerBase, name: str) -> str:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise ChatTemplateError(
            f"{name}: the tokenizer has no chat_template, which model type {CHAT_TEMPLATE_TYPE!r} renders conversations "
            f"with. Use a model/tokenizer folder whose tokenizer_config.json (or chat_template.jinja) has one, or an "
            f"OpenChat model type (`openchat model-types`).")
    return template


@dataclass(frozen=True)
class ChatTemplateSpec:
    """Plain data deciding the ids (template text, serialized tokenizer, special tokens, options): picklable for workers."""

    model_type: ModelType
    name: str
    chat_template: str
    tokenizer_json: str
    special_tokens: tuple[tuple[str, str], ...]
    special_ids: tuple[int, ...]
    eot_ids: tuple[int, ...]
    options: ChatTemplateOptions
    bos_ids: tuple[int, ...] = ()

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, options: ChatTemplateOptions | None = None,
                       name: str | None = None) -> ChatTemplateSpec:
        """Check the template (generation prompt, end-of-turn token, condition placement) and capture it."""
        name = name or str(getattr(tokenizer, "name_or_path", "") or "tokenizer")
        specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special} | set(tokenizer.all_special_tokens)
        spec = cls(
            model_type=MODEL_TYPES[CHAT_TEMPLATE_TYPE], name=name, chat_template=_template_text(tokenizer, name),
            tokenizer_json=tokenizer.backend_tokenizer.to_str(),
            special_tokens=tuple((k, v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)),
            special_ids=tuple(sorted(i for i in (tokenizer.convert_tokens_to_ids(t) for t in specials) if i is not None)),
            eot_ids=(), options=options or ChatTemplateOptions())
        eot_id = ChatTemplate(spec).probe()
        eot = tokenizer.convert_ids_to_tokens(eot_id)
        mt = replace(spec.model_type, eot=eot, inference_condition=spec.options.inference_condition)
        return replace(spec, model_type=mt, eot_ids=(eot_id,))

    def build(self) -> ChatTemplate:
        return ChatTemplate(self)

    def metadata(self) -> dict[str, Any]:
        """What the tokens file records about the template (and the checkpoint copies, so serving renders the same)."""
        import hashlib

        return {"eot": self.model_type.eot, "eot_ids": list(self.eot_ids), "name": self.name,
                "chat_template_sha256": hashlib.sha256(self.chat_template.encode()).hexdigest()[:16],
                "chat_template_options": self.options.to_json()}


class ChatTemplate:
    """Renders and tokenizes conversations with a tokenizer's own chat template (see module docstring)."""

    def __init__(self, spec: ChatTemplateSpec) -> None:
        from tokenizers import Tokenizer

        self.spec = spec
        self.model_type = spec.model_type
        self.options = spec.options
        self.eot_ids = list(spec.eot_ids)
        self._tokenizer = Tokenizer.from_str(spec.tokenizer_json)
        self._template_kwargs = dict(spec.special_tokens)
        self._special_ids = frozenset(spec.special_ids)

    # -- rendering ----------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool, continue_final_message: bool = False) -> str:
        """The template's text for `messages`, as `apply_chat_template(..., tokenize=False)` renders it."""
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(conversations=[messages], chat_template=self.spec.chat_template,
                                           add_generation_prompt=add_generation_prompt,
                                           continue_final_message=continue_final_message, **self._template_kwargs)
        return rendered[0]

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def probe(self) -> int:
        """Check on a probe chat that the template can serve C-RLFT; returns the end-of-turn token id."""
        name = self.spec.name
        try:
            chat = self.options.place_condition([{"role": "user", "content": _PROBE_USER},
                                                 {"role": "assistant", "content": _PROBE_ASSISTANT}], _PROBE_CONDITION, "")
            full = self.render(chat, add_generation_prompt=False)
            prompt = self.render(chat[:-1], add_generation_prompt=True)
            longer = self.render(chat + [{"role": "user", "content": _PROBE_USER_2}], add_generation_prompt=False)
        except Exception as exc:
            raise ChatTemplateError(
                f"chat template of {name} fails on a user/assistant chat with the condition in the "
                f"{self.options.placement} message: {type(exc).__name__}: {exc}. If the template has no system role, set "
                f"the condition placement to 'user' (`--condition-placement user`, `tokenize.condition_placement: user`).") from None
        if _PROBE_CONDITION not in prompt:
            raise ChatTemplateError(f"chat template of {name} drops the {self.options.placement} message that carries the "
                                    f"condition; set the condition placement to "
                                    f"{'user' if self.options.placement == 'system' else 'system'}.")
        if not full.startswith(prompt):
            raise ChatTemplateError(
                f"chat template of {name} is not prefix-stable: the prompt rendered with add_generation_prompt=True "
                f"(ending {prompt[-60:]!r}) is not the start of the same chat with the assistant's reply "
                f"({full[:len(prompt)][-60:]!r}).")
        rest = full[len(prompt):]
        start = rest.find(_PROBE_ASSISTANT)
        user_end = prompt.rfind(_PROBE_USER) + len(_PROBE_USER)
        if start < 0:
            raise ChatTemplateError(f"chat template of {name} does not render the assistant's reply after the generation prompt.")
        if rest[:start].strip():
            raise ChatTemplateError(
                f"chat template of {name} has no usable generation marker: add_generation_prompt=True does not write "
                f"{rest[:start]!r}, which starts every assistant turn, so the model would have to generate its own turn "
                f"header. Add an `{{% if add_generation_prompt %}}` block that writes it.")
        if not prompt[user_end:].strip():
            raise ChatTemplateError(
                f"chat template of {name} has no usable generation marker: nothing is written between the user's message "
                f"and the assistant's reply, so the prompt cannot tell the model that its turn begins.")
        before_user = longer[longer.rfind(_PROBE_ASSISTANT) + len(_PROBE_ASSISTANT):longer.rfind(_PROBE_USER_2)]
        if before_user == prompt[user_end:] + rest[:start]:
            raise ChatTemplateError(
                f"chat template of {name} has no usable generation marker: it writes the same {before_user!r} before a "
                f"user turn as before an assistant turn, so the prompt cannot tell the model that its turn begins.")
        tail = rest[start + len(_PROBE_ASSISTANT):]
        ids, _ = self.encode(tail)
        eot = next((i for i in ids if i in self._special_ids), None)
        if eot is None:
            raise ChatTemplateError(
                f"chat template of {name} has no end-of-turn token: after the assistant's reply it writes {tail!r}, "
                f"which holds no special token to stop generation at.")
        return eot

    # -- training -----------------------------------------------------------------------------------
    def segments(self, conversations: Iterable[Any], inference: bool = False,
                 per_sequence_loss: bool = False) -> list[list[tuple[list[int], float]]]:
        """Per conversation, (token ids, weight) runs: assistant turns + EOT carry the turn's weight, the rest 0."""
        if inference:
            return [[(ids, 0.0)] for ids in self.tokenize(conversations, inference=True)[0]]
        result = []
        for index, conv in enumerate(conversations):
            ids, weights = self._conversation_weights(index, conv, per_sequence_loss)
            runs: list[tuple[list[int], float]] = []
            for token, weight in zip(ids, weights):
                if runs and runs[-1][1] == weight:
                    runs[-1][0].append(token)
                else:
                    runs.append(([token], weight))
            result.append(runs)
        return result

    def _conversation_weights(self, index: int, conv: Any, per_sequence_loss: bool) -> tuple[list[int], list[float]]:
        items, condition, system = conversation_fields(conv)
        for i, m in enumerate(items):
            if m.get("weight") is None:
                raise MissingWeightError(index, f"items[{i}].weight")
        try:
            messages = self.options.place_condition(items, condition, system)
        except ValueError as exc:
            raise ConversationRenderError(index, str(exc)) from None
        offset = len(messages) - len(items)
        full = self.render(messages, add_generation_prompt=False)
        ids, offsets = self.encode(full)
        weights = [0.0] * len(ids)
        for i, item in enumerate(items):
            if item["role"] != "assistant" or not float(item["weight"]):
                continue
            j = i + offset
            prompt = self.render(messages[:j], add_generation_prompt=True)
            turn_end = len(self.render(messages[:j + 1], add_generation_prompt=False))
            prompt_ids, _ = self.encode(prompt)
            start = len(prompt_ids)
            if not full.startswith(prompt) or ids[:start] != prompt_ids:
                where = "text" if not full.startswith(prompt) else "token ids"
                raise ConversationRenderError(
                    index, f"chat template of {self.spec.name} is not prefix-stable for items[{i}]: the {where} of the "
                           f"prompt before this assistant turn differ from the start of the whole conversation, so its "
                           f"training prompt would not equal the serving prompt")
            end = next((t for t in range(len(ids) - 1, start - 1, -1)
                        if ids[t] in self.eot_ids and offsets[t][0] < turn_end), None)
            if end is None:
                raise ConversationRenderError(index, f"items[{i}]: the assistant turn has no end-of-turn token "
                                                     f"{self.model_type.eot!r} in the rendered conversation")
            weight = float(item["weight"])
            if per_sequence_loss:
                weight /= end + 1 - start
            weights[start:end + 1] = [weight] * (end + 1 - start)
        return ids, weights

    def tokenize(self, conversations: Iterable[Any], inference: bool = False,
                 per_sequence_loss: bool = False) -> tuple[list[list[int]], list[list[float]]]:
        """Token ids and per-token weights. With `inference`, a final assistant message is the prompt's open turn:
        empty gives the generation prompt, non-empty is continued (`continue_final_message`)."""
        if not inference:
            segs = self.segments(conversations, per_sequence_loss=per_sequence_loss)
            return ([[t for ids, _ in s for t in ids] for s in segs],
                    [[w for ids, w in s for _ in ids] for s in segs])
        all_ids = []
        for conv in conversations:
            items, condition, system = conversation_fields(conv)
            items = list(items)
            messages = self.options.place_condition(items, condition or self.options.inference_condition, system)
            if items and items[-1]["role"] == "assistant" and not items[-1]["content"]:
                text = self.render(messages[:-1], add_generation_prompt=True)
            elif items and items[-1]["role"] == "assistant":
                text = self.render(messages, add_generation_prompt=False, continue_final_message=True)
            else:
                text = self.render(messages, add_generation_prompt=True)
            all_ids.append(self.encode(text)[0])
        return all_ids, [[0.0] * len(ids) for ids in all_ids]

    def prompt_ids(self, messages: Sequence[Mapping[str, str]], condition: str = "", system: str = "") -> list[int]:
        """Serving prompt: `apply_chat_template(placed messages, add_generation_prompt=True)` ids."""
        items = [{"role": m["role"], "content": m["content"]} for m in messages]
        return self.tokenize([{"items": items, "condition": condition, "system": system}], inference=True)[0][0]
