"""`tokenize:` settings: the conversation template, its tokenizer and the chat_template condition options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from openchat_core.section import Section
from openchat_core.templates.chat_template import ChatTemplateOptions
from openchat_core.templates.model_types import canonical_model_type_name

_CT = ChatTemplateOptions()  # the chat_template defaults, defined once there


class TokenizeConfig(Section):
    model_type: str = Field("openchat_3.5", description="conversation template (see `openchat model-types`)")
    tokenizer: str | None = Field(None, description="tokenizer folder or preset; default: model.base")
    per_sequence_loss: bool = False
    workers: int = Field(1, ge=1, le=64)
    batch_rows: int = Field(2048, ge=1)
    # Model type `chat_template` only: where the C-RLFT condition is rendered (templates/chat_template.py).
    condition_format: str = Field(_CT.condition_format, description="chat_template: the condition line; must contain {condition}")
    condition_placement: Literal["system", "user"] = Field(
        _CT.placement, description="chat_template: condition line in a system message, or before the first user message")
    inference_condition: str = Field(_CT.inference_condition, description="chat_template: condition when a request gives none")

    def chat_template_options(self) -> ChatTemplateOptions:
        return ChatTemplateOptions(self.condition_format, self.condition_placement, self.inference_condition)

    @field_validator("condition_format")
    @classmethod
    def _valid_condition_format(cls, value: str) -> str:
        ChatTemplateOptions(condition_format=value)
        return value

    @field_validator("model_type")
    @classmethod
    def _known_model_type(cls, value: str) -> str:
        try:
            canonical_model_type_name(value)
        except KeyError as e:
            raise ValueError(str(e).strip('"')) from None
        return value
