"""Model type `chat_template`: C-RLFT rendered by the tokenizer's own Jinja template.

Golden ids (tests/golden/chat_template_ids.json) for ChatML (SmolLM2), Meta's Llama 3 instruct and
Mistral-7B-Instruct-v0.1 templates, and the properties that make training and serving agree:
the prompt before every assistant turn is `apply_chat_template(..., add_generation_prompt=True)`,
supervised tokens are exactly each reply plus the EOT, and the condition changes the prompt.
Regenerate the golden file (only after checking a diff by eye): `python -m tests.unit.test_chat_template`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openchat_core.templates.chat_template import ChatTemplateError, ChatTemplateOptions, ConversationRenderError
from openchat_core.templates.conversation import MissingWeightError
from openchat_core.models.checkpoint import checkpoint_template
from openchat_core.templates.specs import load_template

GOLDEN_FILE = Path(__file__).parent.parent / "golden" / "chat_template_ids.json"
CASES = {  # golden case: (tokenizer preset, condition options)
    "chatml_smollm2": ("preset:smollm2", ChatTemplateOptions()),
    "llama3_instruct": ("preset:llama3", ChatTemplateOptions()),
    "mistral_instruct_v0.1": ("preset:mistral", ChatTemplateOptions(placement="user")),  # no system role
}
CONV = {"condition": "GPT4 Correct", "system": "", "items": [
    {"role": "user", "content": "Hello", "weight": 0.0}, {"role": "assistant", "content": "Hi!", "weight": 1.0},
    {"role": "user", "content": "What is 2+2?", "weight": 0.0}, {"role": "assistant", "content": "It is 4.", "weight": 1.0}]}


def _tokenizer(preset: str):
    from openchat_core.templates.tokenizers import load_tokenizer

    return load_tokenizer(preset)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    preset, options = CASES[request.param]
    tok = _tokenizer(preset)
    return request.param, tok, load_template("chat_template", tok, options, name=preset)


def _apply(tok, messages, **kwargs) -> list[int]:
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
    return list(ids)


def _golden_entry(tok, template) -> dict:
    ids, weights = template.tokenize([CONV])
    prompt = template.prompt_ids(CONV["items"][:1], condition=CONV["condition"])
    return {"train_ids": ids[0], "train_weights": weights[0], "prompt_ids": prompt, "prompt_text": tok.decode(prompt),
            "eot": template.model_type.eot}


def test_ids_equal_golden_file(case):
    name, tok, template = case
    assert _golden_entry(tok, template) == json.loads(GOLDEN_FILE.read_text())[name]


def test_prompt_before_every_reply_is_apply_chat_template_and_prefix_of_training_ids(case):
    _, tok, template = case
    ids, weights = template.tokenize([CONV])
    items = CONV["items"]
    for i, item in enumerate(items):
        if item["role"] != "assistant":
            continue
        messages = template.options.place_condition(items[:i], CONV["condition"], "")
        served = _apply(tok, messages, add_generation_prompt=True)
        assert template.prompt_ids(items[:i], condition=CONV["condition"]) == served
        assert ids[0][:len(served)] == served
        assert weights[0][len(served) - 1] == 0.0 and weights[0][len(served)] == 1.0  # the reply starts right after


def test_supervised_tokens_are_exactly_each_reply_and_its_eot(case):
    _, tok, template = case
    ids, weights = template.tokenize([CONV])
    spans, current = [], []
    for token, weight in zip(ids[0], weights[0]):
        if weight:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    spans += [current] if current else []
    eot = template.model_type.eot
    assert [tok.decode(s).strip() for s in spans] == [f"{m['content']}{eot}" for m in CONV["items"] if m["role"] == "assistant"]
    assert all(s[-1] == template.eot_ids[0] for s in spans)


def test_conditions_give_different_prompts_and_no_condition_no_line(case):
    _, tok, template = case
    expert, _ = template.tokenize([CONV])
    noisy, _ = template.tokenize([{**CONV, "condition": "GPT3"}])
    plain, _ = template.tokenize([{**CONV, "condition": ""}])
    assert len({tuple(expert[0]), tuple(noisy[0]), tuple(plain[0])}) == 3
    assert "GPT3" in tok.decode(noisy[0]) and "Condition" not in tok.decode(plain[0])
    # serving: an empty condition means the configured inference condition
    assert template.prompt_ids(CONV["items"][:1]) == template.prompt_ids(CONV["items"][:1], condition="GPT4 Correct")


def test_condition_format_and_system_prompt_are_rendered_as_configured():
    tok = _tokenizer("preset:smollm2")
    template = load_template("chat_template", tok, ChatTemplateOptions(condition_format="[mode: {condition}]"))
    ids = template.prompt_ids([{"role": "user", "content": "Hi"}], condition="Math", system="Be brief.")
    assert tok.decode(ids) == ("<|im_start|>system\n[mode: Math]\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                               "<|im_start|>assistant\n")


def test_per_sequence_loss_and_missing_weights():
    template = load_template("chat_template", _tokenizer("preset:smollm2"))
    _, weights = template.tokenize([CONV], per_sequence_loss=True)
    assert sum(weights[0]) == pytest.approx(2.0)  # two replies, each summing to its weight 1.0
    with pytest.raises(MissingWeightError, match=r"items\[1\].weight"):
        template.tokenize([{"items": [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a"}]}])


def _with_template(text: str):
    tok = _tokenizer("preset:smollm2")
    tok.chat_template = text
    return tok


CHATML_NO_GENERATION_PROMPT = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
                               "+ '<|im_end|>' + '\n'}}{% endfor %}")


@pytest.mark.parametrize("text, match", [
    (CHATML_NO_GENERATION_PROMPT, r"my-template has no usable generation marker: add_generation_prompt=True does not write "
                                  r"'<\|im_start\|>assistant\\n'"),
    ("{% for message in messages %}{{ message['content'] + eos_token }}{% endfor %}",
     "my-template has no usable generation marker: it writes the same '<|im_end|>' before a user turn"),
    ("{% for message in messages %}{{ message['content'] }}{% endfor %}",
     "my-template has no usable generation marker: nothing is written between the user's message"),
    ("{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
     "{% if add_generation_prompt %}assistant: {% endif %}", "my-template has no end-of-turn token"),
])
def test_unusable_templates_are_refused_with_the_reason(text, match):
    with pytest.raises(ChatTemplateError, match=match):
        load_template("chat_template", _with_template(text), name="my-template")


def test_missing_template_and_unsupported_system_role_have_fixes():
    tok = _tokenizer("preset:smollm2")
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="has no chat_template"):
        load_template("chat_template", tok, name="plain")
    with pytest.raises(ChatTemplateError, match="condition placement to 'user'"):
        load_template("chat_template", _tokenizer("preset:mistral"), ChatTemplateOptions(placement="system"))


def test_template_that_is_not_prefix_stable_is_refused():
    # Mistral v0.3's style: the system message is folded into the *last* user message, so earlier prompts change.
    v3_like = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
               "{% set msgs = messages[1:] %}{% else %}{% set msgs = messages %}{% endif %}{% for m in msgs %}"
               "{% if m['role'] == 'user' %}{% if loop.last and sys is defined %}{{ '[INST] ' + sys + '\n\n' + m['content'] + '[/INST]' }}"
               "{% else %}{{ '[INST] ' + m['content'] + '[/INST]' }}{% endif %}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}"
               "{% endfor %}")
    with pytest.raises(ChatTemplateError, match="v3-like is not prefix-stable"):
        load_template("chat_template", _with_template(v3_like), name="v3-like")
    # Stable on the probe, but it trims only the last message: a prompt ending in a space differs from the whole chat.
    trims_last = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + (m['content'] | trim if loop.last else m['content']) "
                  "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    template = load_template("chat_template", _with_template(trims_last), name="trims-last")
    conv = {**CONV, "items": [{**CONV["items"][0], "content": "Hello "}, *CONV["items"][1:]]}
    with pytest.raises(ConversationRenderError, match=r"trims-last is not prefix-stable for items\[1\]"):
        template.tokenize([conv])


def test_options_validate_the_format():
    with pytest.raises(ValueError, match="must contain {condition} exactly once"):
        ChatTemplateOptions(condition_format="Condition: {cond}")
    assert ChatTemplateOptions.from_json(ChatTemplateOptions(placement="user").to_json()).placement == "user"


def test_checkpoint_template_reads_the_options_recorded_at_training(tmp_path):
    tok = _tokenizer("preset:smollm2")
    options = ChatTemplateOptions(condition_format="Quality: {condition}", inference_condition="expert")
    spec_meta = load_template("chat_template", tok, options).spec.metadata()
    (tmp_path / "openchat.json").write_text(json.dumps({"model_type": "chat_template", "template": spec_meta}))
    template = checkpoint_template(tmp_path, "chat_template", tok)
    assert "Quality: expert" in tok.decode(template.prompt_ids([{"role": "user", "content": "Hi"}]))


def test_pretokenize_cli_gives_different_ids_per_condition_and_records_the_options(tmp_path):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from openchat_core.cli import build_app
    from openchat_core.data.pretokenize import read_metadata

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({**CONV, "condition": c}) + "\n" for c in ("GPT4 Correct", "GPT3")))
    args = ["pretokenize", "--model-type", "chat_template", "--model-path", "preset:smollm2", "--in", str(src)]
    result = CliRunner().invoke(build_app(), [*args, "--out", str(tmp_path / "t.parquet"), "--condition-format", "Quality: {condition}"])
    assert result.exit_code == 0, result.output
    expert, low = pq.read_table(tmp_path / "t.parquet").column("nz_input_ids").to_pylist()
    tok = _tokenizer("preset:smollm2")
    assert expert != low and "Quality: GPT3" in tok.decode(low) and "Quality: GPT4 Correct" in tok.decode(expert)
    assert read_metadata(tmp_path / "t.parquet")["template"]["chat_template_options"]["condition_format"] == "Quality: {condition}"
    bad = CliRunner().invoke(build_app(), [*args, "--out", str(tmp_path / "u.parquet"), "--condition-format", "Quality"])
    assert bad.exit_code != 0 and "must contain {condition}" in bad.output


def test_served_prompts_follow_the_checkpoint_options(tmp_path):
    from fastapi.testclient import TestClient

    from openchat_core.serving.app import build_app
    from openchat_core.serving.settings import ServeSettings
    from tests.unit.serving_fakes import FakeEngineFactory, make_tokenizer_checkpoint

    tok = _tokenizer("preset:smollm2")
    options = ChatTemplateOptions(condition_format="Quality: {condition}", inference_condition="expert")
    folder = make_tokenizer_checkpoint(tmp_path / "ckpt", tok, model_type="chat_template")
    meta = {"model_type": "chat_template", "template": load_template("chat_template", tok, options).spec.metadata()}
    (folder / "openchat.json").write_text(json.dumps(meta))
    factory = FakeEngineFactory()
    user = [{"role": "user", "content": "Hi"}]
    with TestClient(build_app(ServeSettings(model=folder, engine="vllm", api_keys=["k"]), engine_factory=factory)) as client:
        for condition, rendered in (("", "expert"), ("GPT3", "GPT3")):
            body = {"model": "chat_template", "messages": user, "max_tokens": 4, **({"condition": condition} if condition else {})}
            assert client.post("/v1/chat/completions", headers={"Authorization": "Bearer k"}, json=body).status_code == 200
            placed = [{"role": "system", "content": f"Quality: {rendered}"}, *user]
            assert factory.engines[-1].calls[-1].prompt_ids == _apply(tok, placed, add_generation_prompt=True)
        assert tok.convert_tokens_to_ids("<|im_end|>") in factory.engines[-1].calls[-1].options.stop_token_ids


def test_evaluation_prompts_use_the_checkpoint_template_and_inference_condition(tmp_path):
    from openchat_core.evaluation.runner import run_generation_eval
    from tests.unit.serving_fakes import make_tokenizer_checkpoint
    from tests.unit.test_eval_runner import FIXTURES, SCRIPT, ScriptedGenerator

    tok = _tokenizer("preset:smollm2")
    folder = make_tokenizer_checkpoint(tmp_path / "ckpt", tok, model_type="chat_template")
    options = ChatTemplateOptions(inference_condition="expert")
    (folder / "openchat.json").write_text(json.dumps({"model_type": "chat_template",
                                                      "template": load_template("chat_template", tok, options).spec.metadata()}))
    engine = ScriptedGenerator(tok, SCRIPT)
    result = run_generation_eval(folder, FIXTURES, ["demo"], out_dir=tmp_path / "out", engine=engine, max_new_tokens=16)
    question = [{"role": "system", "content": "Condition: expert"},
                {"role": "user", "content": "What is the capital of France? Answer with one word."}]
    assert engine.prompts[0] == _apply(tok, question, add_generation_prompt=True)
    assert result.summary.condition == "expert"


def test_checkpoint_keeps_the_tokenizer_template_and_stops_at_its_eot(tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    from openchat_core.models.checkpoint import save_checkpoint
    from openchat_core.models.model_factory import build_random_model
    from tests.unit.eval_models import UNTIED_TINY_MISTRAL

    tok = _tokenizer("preset:smollm2")
    meta = {"template": load_template("chat_template", tok).spec.metadata()}
    model = build_random_model(UNTIED_TINY_MISTRAL, tok, seed=0, attn_implementation="sdpa")
    folder = save_checkpoint(tmp_path / "ep_0", model, tok, "chat_template", meta)
    assert AutoTokenizer.from_pretrained(str(folder)).chat_template == tok.chat_template
    assert tok.convert_tokens_to_ids("<|im_end|>") in GenerationConfig.from_pretrained(str(folder)).eos_token_id
    assert json.loads((folder / "openchat.json").read_text())["template"]["chat_template_options"]["placement"] == "system"


def regenerate() -> None:
    entries = {}
    for name, (preset, options) in sorted(CASES.items()):
        tok = _tokenizer(preset)
        entries[name] = _golden_entry(tok, load_template("chat_template", tok, options, name=preset))
    GOLDEN_FILE.write_text(json.dumps(entries, indent=1) + "\n")


if __name__ == "__main__":
    regenerate()
