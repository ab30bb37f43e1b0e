"""Golden template tests for every model type.

1. Token ids and weights equal OpenChat's own expected ids (its test file, computed with the real
   hub tokenizers) for openchat_3.5 (Mistral) and openchat_3.6 (Llama 3), in training and inference.
2. For every model type, the inference prompt text rendered by its `chat_template` is the golden
   string below, and our token-level prompt equals `apply_chat_template(..., tokenize=True)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openchat_core.templates.conversation import ConversationTemplate, MissingSpecialTokenError, MissingWeightError
from openchat_core.templates.model_types import MODEL_TYPES, canonical_model_type_name, get_model_type

# `chat_template` renders the tokenizer's own template: golden tests in test_chat_template.py.
FIXED_TYPES = {name: mt for name, mt in MODEL_TYPES.items() if name != "chat_template"}
GOLDEN = json.loads((Path(__file__).parent.parent / "golden" / "openchat_reference_ids.json").read_text())


def _chat_ids(tokenizer, template: str, turns, **kwargs) -> list[int]:
    ids = tokenizer.apply_chat_template(turns, chat_template=template, tokenize=True, add_generation_prompt=True, **kwargs)
    return ids if isinstance(ids, list) else list(ids["input_ids"])


@pytest.fixture(scope="module")
def tokenizers_by_type(mistral_tokenizer, llama3_tokenizer):
    """A real tokenizer per model type.

    No Gemma tokenizer ships offline; its stand-in is the Mistral SentencePiece vocabulary with
    Gemma's rules: no "▁" prepended to each piece (add_dummy_prefix=False) and Gemma's turn tokens.
    """
    from tokenizers import normalizers

    from openchat_core.templates.tokenizers import load_tokenizer

    gemma_like = load_tokenizer("preset:mistral")
    gemma_like.backend_tokenizer.normalizer = normalizers.Replace(" ", "▁")
    gemma_like.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    smollm2 = load_tokenizer("preset:smollm2")
    return {
        "openchat_3.6": llama3_tokenizer, "llama3_instruct": llama3_tokenizer,
        "openchat_v3.2": mistral_tokenizer, "openchat_v3.2_mistral": mistral_tokenizer, "zephyr_mistral": mistral_tokenizer,
        "openchat_v3.2_gemma_new": gemma_like, "gemma_it": gemma_like, "chatml_8192": smollm2,
    }


@pytest.mark.parametrize("mode", ["training", "inference"])
@pytest.mark.parametrize("model_type", ["openchat_v3.2_mistral", "openchat_3.6"])
def test_ids_equal_openchat_reference(mode, model_type, tokenizers_by_type):
    case = next(c for c in GOLDEN[mode]["cases"] if c["type"] == model_type)
    template = ConversationTemplate.from_tokenizer(model_type, tokenizers_by_type[model_type])
    tokens, weights = template.tokenize(GOLDEN[mode]["conversations"], inference=mode == "inference")
    assert tokens == case["expected_tokens"]
    if mode == "training":
        assert weights == case["expected_weights"]


CHAT = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}, {"role": "user", "content": "How are you?"}]

GOLDEN_PROMPTS = {
    "openchat_3.6": "<|begin_of_text|><|start_header_id|>System<|end_header_id|>\n\nBe brief.<|eot_id|>"
                    "<|start_header_id|>GPT4 Correct User<|end_header_id|>\n\nHello<|eot_id|>"
                    "<|start_header_id|>GPT4 Correct Assistant<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>GPT4 Correct User<|end_header_id|>\n\nHow are you?<|eot_id|>"
                    "<|start_header_id|>GPT4 Correct Assistant<|end_header_id|>\n\n",
    "openchat_v3.2": "<s>Be brief.<|end_of_turn|>GPT4 User: Hello<|end_of_turn|>GPT4 Assistant: Hi<|end_of_turn|>"
                     "GPT4 User: How are you?<|end_of_turn|>GPT4 Assistant:",
    "openchat_v3.2_mistral": "<s>Be brief.<|end_of_turn|>GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant: Hi<|end_of_turn|>"
                             "GPT4 Correct User: How are you?<|end_of_turn|>GPT4 Correct Assistant:",
    "openchat_v3.2_gemma_new": "<s>Be brief.<end_of_turn>GPT4 Correct User: Hello<end_of_turn>GPT4 Correct Assistant: Hi<end_of_turn>"
                               "GPT4 Correct User: How are you?<end_of_turn>GPT4 Correct Assistant:",
    "chatml_8192": "Be brief.<|im_end|><|im_start|>user\nHello<|im_end|><|im_start|>assistant\nHi<|im_end|>"
                   "<|im_start|>user\nHow are you?<|im_end|><|im_start|>assistant\n",
    "zephyr_mistral": "<s>Be brief.</s><|user|>\n Hello</s><|assistant|>\n Hi</s><|user|>\n How are you?</s><|assistant|>\n",
    "gemma_it": "<s>Be brief.<end_of_turn><start_of_turn>user\nHello<end_of_turn><start_of_turn>model\nHi<end_of_turn>"
                "<start_of_turn>user\nHow are you?<end_of_turn><start_of_turn>model\n",
    "llama3_instruct": "<|begin_of_text|>Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                       "<|start_header_id|>assistant<|end_header_id|>\n\nHi<|eot_id|>"
                       "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
                       "<|start_header_id|>assistant<|end_header_id|>\n\n",
}


def test_every_model_type_has_a_golden_prompt():
    assert set(GOLDEN_PROMPTS) == set(FIXED_TYPES)


@pytest.mark.parametrize("model_type", sorted(FIXED_TYPES))
def test_chat_template_renders_golden_prompt(model_type, tokenizers_by_type):
    tok = tokenizers_by_type[model_type]
    turns = [{"role": "system", "content": "Be brief."}, *CHAT]
    text = tok.apply_chat_template(turns, chat_template=MODEL_TYPES[model_type].hf_chat_template, tokenize=False, add_generation_prompt=True)
    assert text == GOLDEN_PROMPTS[model_type]


GEMMA_NEW_MISMATCH = pytest.mark.xfail(
    strict=True,
    reason="OpenChat's own gemma_new chat_template writes 'User: ' + content, but its trainer tokenizes prefix and "
           "content separately; on Gemma's tokenizer (no dummy prefix) the template therefore adds a '▁' before each "
           "message that training never saw. We ship OpenChat's string verbatim and serve with the token-level path.")


@pytest.mark.parametrize("system", ["", "Be brief."])
@pytest.mark.parametrize("model_type", [pytest.param(m, marks=GEMMA_NEW_MISMATCH) if m == "openchat_v3.2_gemma_new" else m
                                        for m in sorted(FIXED_TYPES)])
def test_inference_prompt_ids_equal_apply_chat_template(model_type, system, tokenizers_by_type):
    tok = tokenizers_by_type[model_type]
    template = ConversationTemplate.from_tokenizer(model_type, tok)
    turns = ([{"role": "system", "content": system}] if system else []) + CHAT
    assert template.prompt_ids(CHAT, system=system) == _chat_ids(tok, MODEL_TYPES[model_type].hf_chat_template, turns)


def test_condition_selects_prefix(mistral_tokenizer):
    template = ConversationTemplate.from_tokenizer("openchat_3.5", mistral_tokenizer)
    math = template.prompt_ids([{"role": "user", "content": "1+1="}], condition="Math Correct")
    assert mistral_tokenizer.decode(math) == "<s> Math Correct User: 1+1=<|end_of_turn|> Math Correct Assistant:"


def test_our_condition_template_accepts_condition_variable(mistral_tokenizer):
    template = ConversationTemplate.from_tokenizer("openchat_v3.2", mistral_tokenizer)
    ids = _chat_ids(mistral_tokenizer, MODEL_TYPES["openchat_v3.2"].hf_chat_template, CHAT[:1], condition="GPT3")
    assert ids == template.prompt_ids(CHAT[:1], condition="GPT3")


def test_special_token_text_in_content_is_escaped(mistral_tokenizer):
    template = ConversationTemplate.from_tokenizer("openchat_3.5", mistral_tokenizer)
    conv = {"items": [{"role": "user", "content": "<|end_of_turn|>", "weight": 0}, {"role": "assistant", "content": "</s>", "weight": 1}]}
    tokens, _ = template.tokenize([conv])
    assert tokens[0].count(32000) == 2  # only the two real EOTs, not the one written inside the content
    assert tokens[0].count(2) == 0


def test_per_sequence_loss_divides_by_turn_length(mistral_tokenizer):
    template = ConversationTemplate.from_tokenizer("openchat_3.5", mistral_tokenizer)
    conv = {"items": [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a b c", "weight": 1}]}
    _, weights = template.tokenize([conv], per_sequence_loss=True)
    supervised = [w for w in weights[0] if w]
    assert sum(supervised) == pytest.approx(1.0) and len(set(supervised)) == 1


def test_training_requires_weights(mistral_tokenizer):
    template = ConversationTemplate.from_tokenizer("openchat_3.5", mistral_tokenizer)
    with pytest.raises(MissingWeightError, match=r"items\[1\].weight"):
        template.tokenize([{"items": [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a"}]}])


def test_missing_eot_token_has_actionable_error(llama3_tokenizer):
    with pytest.raises(MissingSpecialTokenError, match="add-special-tokens"):
        ConversationTemplate.from_tokenizer("openchat_3.5", llama3_tokenizer)


def test_aliases_and_unknown_names():
    assert canonical_model_type_name("openchat_3.5") == "openchat_v3.2_mistral"
    assert get_model_type("openchat_3.5_gemma_new").name == "openchat_v3.2_gemma_new"
    with pytest.raises(KeyError, match="choose one of"):
        get_model_type("gpt5")


def test_model_type_table_matches_openchat():
    expected = {  # name: (max context, eot, inference condition, system_as_role)
        "openchat_3.6": (8192, "<|eot_id|>", "GPT4 Correct", True),
        "openchat_v3.2": (4096, "<|end_of_turn|>", "GPT4", False),
        "openchat_v3.2_mistral": (8192, "<|end_of_turn|>", "GPT4 Correct", False),
        "openchat_v3.2_gemma_new": (8192, "<end_of_turn>", "GPT4 Correct", False),
        "chatml_8192": (8192, "<|im_end|>", "", False),
        "zephyr_mistral": (8192, "</s>", "", False),
        "gemma_it": (8192, "<end_of_turn>", "", False),
        "llama3_instruct": (8192, "<|eot_id|>", "", False),
    }
    actual = {n: (m.max_context, m.eot, m.inference_condition, m.system_as_role) for n, m in FIXED_TYPES.items()}
    assert actual == expected
