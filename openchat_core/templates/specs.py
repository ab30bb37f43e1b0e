"""One place that turns (model type, tokenizer) into a template: OpenChat's token-level one or a Jinja chat template.

Every stage (pretokenize, evaluation, serving, the registry's pyfunc) builds its template here (for a
checkpoint: `models.checkpoint.checkpoint_template`), so the `chat_template` model type renders
prompts the same way everywhere. Its condition options travel with the data: the tokens file's
`metadata_json["template"]` and the checkpoint's `openchat.json["template"]` hold them (`options_from_metadata`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from openchat_core.templates.chat_template import CHAT_TEMPLATE_TYPE, ChatTemplate, ChatTemplateOptions, ChatTemplateSpec
from openchat_core.templates.conversation import ConversationTemplate, TemplateSpec
from openchat_core.templates.model_types import ModelType, get_model_type

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

AnySpec = TemplateSpec | ChatTemplateSpec
AnyTemplate = ConversationTemplate | ChatTemplate


def template_spec(model_type: ModelType | str, tokenizer: PreTrainedTokenizerBase,
                  options: ChatTemplateOptions | None = None, name: str | None = None) -> AnySpec:
    """The spec for `model_type` on `tokenizer`; `options` only apply to (and default for) `chat_template`."""
    mt = get_model_type(model_type) if isinstance(model_type, str) else model_type
    if mt.name == CHAT_TEMPLATE_TYPE:
        return ChatTemplateSpec.from_tokenizer(tokenizer, options, name)
    return TemplateSpec.from_tokenizer(mt, tokenizer)


def load_template(model_type: ModelType | str, tokenizer: PreTrainedTokenizerBase,
                  options: ChatTemplateOptions | None = None, name: str | None = None) -> AnyTemplate:
    return template_spec(model_type, tokenizer, options, name).build()


def options_from_metadata(metadata: Mapping[str, Any] | None) -> ChatTemplateOptions | None:
    """The chat-template condition options recorded in tokens or checkpoint metadata (None when absent)."""
    template = (metadata or {}).get("template")
    if not isinstance(template, Mapping) or "chat_template_options" not in template:
        return None
    return ChatTemplateOptions.from_json(template["chat_template_options"])
