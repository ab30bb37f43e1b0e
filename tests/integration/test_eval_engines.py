"""vLLM vs transformers on the same tiny checkpoint, prompts and settings (greedy, fp32): same answers?

Runs the eval runner on every fixture question with both engines and compares the generated
token ids question by question. Both engines compute in float32 but with different kernels, so a
greedy step whose top two logits are within rounding of each other may pick different tokens; the
agreement rate is measured and printed with every mismatch, and must stay high.

To exercise stopping on both engines, the stop set is the template's EOT plus a token the random
model actually produces (it never produces <|end_of_turn|> on its own).

    OPENCHAT_SERVE_PYTHON=.venv-serve/bin/python pytest tests/integration/test_eval_engines.py -m integration -s
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from openchat_core.evaluation.runner import run_generation_eval
from openchat_core.serve_env import find_serve_python
from tests.unit.eval_models import save_tiny_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIXTURES = Path(__file__).parents[1] / "fixtures" / "eval_data"
MAX_NEW_TOKENS = 64
MIN_AGREEMENT = 0.9


def _serve_python_or_skip() -> Path:
    try:
        python = find_serve_python()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    if python is None:
        pytest.skip("no serving environment with vLLM (set OPENCHAT_SERVE_PYTHON or run `make setup`)")
    return python


def test_vllm_and_transformers_agree_on_greedy_answers(tmp_path):
    _serve_python_or_skip()
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    common = dict(model_dir=ckpt, eval_data_root=FIXTURES, max_new_tokens=MAX_NEW_TOKENS)

    probe = run_generation_eval(out_dir=tmp_path / "probe", engine="transformers", **common)
    seen = Counter(t for r in probe.results for t in set(r.output_token_ids[1:]))
    extra_stop = seen.most_common(1)[0][0]
    stops = {"stop_token_ids": [32000, extra_stop]}

    hf = run_generation_eval(out_dir=tmp_path / "hf", engine="transformers", engine_options=stops, **common)
    vl = run_generation_eval(out_dir=tmp_path / "vllm", engine="vllm",
                             engine_options={**stops, "log_dir": tmp_path / "vllm"}, **common)

    assert hf.summary.prompts_digest == vl.summary.prompts_digest  # identical prompts, token for token
    assert hf.summary.eval_data_digest == vl.summary.eval_data_digest
    assert [r.prompt_tokens for r in hf.results] == [r.prompt_tokens for r in vl.results]

    pairs = list(zip(hf.results, vl.results, strict=True))
    same = [a.output_token_ids == b.output_token_ids for a, b in pairs]
    agreement = sum(same) / len(same)
    tokens = sum(len(a.output_token_ids) for a, _ in pairs)
    print(f"\nvLLM vs transformers: {sum(same)}/{len(same)} answers identical ({agreement:.1%}), "
          f"{tokens} tokens, stop ids {stops['stop_token_ids']}, "
          f"finish reasons hf={hf.summary.finish_reasons} vllm={vl.summary.finish_reasons}")
    print(f"timings: transformers generate {hf.timings['generate_s']} s; vLLM worker wall "
          f"{vl.timings['engine_run'].get('wall_s')} s (engine start {vl.timings['engine_run'].get('engine_start_s')} s, "
          f"generate {vl.timings['engine_run'].get('generate_s')} s)")
    for (a, b), ok in zip(pairs, same, strict=True):
        if not ok:
            k = next((i for i, (x, y) in enumerate(zip(a.output_token_ids, b.output_token_ids, strict=False)) if x != y),
                     min(len(a.output_token_ids), len(b.output_token_ids)))
            print(f"  MISMATCH {a.task_name}:{a.line} first differing token #{k}: "
                  f"hf={a.output_token_ids[k:k + 4]} vllm={b.output_token_ids[k:k + 4]}")
    assert "stop" in hf.summary.finish_reasons  # stopping is exercised on both engines
    assert agreement >= MIN_AGREEMENT
    for a, b in pairs:
        if a.output_token_ids == b.output_token_ids:
            assert (a.response, a.answer, a.correct, a.finish_reason) == (b.response, b.answer, b.correct, b.finish_reason)
    assert vl.summary.engine == "vllm" and vl.summary.engine_info["vllm"]


def test_vllm_evaluates_a_lora_adapter_with_the_same_greedy_answers_as_peft(tmp_path):
    """The vLLM generator runs an adapter checkpoint as base + LoRARequest; `auto` picks it for adapters now."""
    _serve_python_or_skip()
    from openchat_core.evaluation.generators import choose_engine, make_generator
    from openchat_core.templates.conversation import ConversationTemplate
    from openchat_core.templates.tokenizers import load_tokenizer
    from tests.integration.lora_models import build_lora_models, peft_greedy

    models = build_lora_models(tmp_path)
    assert choose_engine("auto", models["a"]) == "vllm"
    template = ConversationTemplate.from_tokenizer("openchat_3.5", load_tokenizer(models["a"]))
    prompts = [template.prompt_ids([{"role": "user", "content": q}]) for q in ("Hi", "What is C-RLFT?", "2 + 2 = ?")]
    vllm = make_generator("vllm", models["a"], log_dir=tmp_path / "vllm").generate(prompts, 8)
    reference = peft_greedy(models["a"], prompts, 8)
    assert [g.token_ids for g in vllm] == reference
    assert reference != peft_greedy(models["base"], prompts, 8)  # the adapter is applied, not ignored
