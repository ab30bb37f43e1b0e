"""lm-evaluation-harness (the real package, as a user runs it) against the real vLLM server.

The checkpoint has large random weights (peaky distributions, so a token-position slip changes
every number) and is served in float32, so lm-eval's numbers can be checked against transformers
on the same checkpoint: each multiple-choice log-likelihood to 1e-3, each greedy generation
exactly. Tasks are local files (tests/fixtures/lm_eval: YAML + JSON Lines, no download).

Run: .venv/bin/python -m pytest tests/integration/test_lm_eval.py -m integration (about 3-4 min on 2 cores).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from openchat_core.evaluation.harness import run_harness  # noqa: E402
from openchat_core.serving.deploy import ServerHandle, deploy_model, stop_server  # noqa: E402
from openchat_core.ports import free_port  # noqa: E402
from tests.integration.test_serving_vllm import serve_python  # noqa: E402,F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval"
KEY = "sk-lm-eval"
MAX_LEN = 512


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from dataclasses import replace

    from openchat_core.templates.tokenizers import load_tokenizer
    from openchat_core.models.checkpoint import save_checkpoint
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS

    preset = MODEL_PRESETS["tiny-mistral"]
    preset = replace(preset, architecture={**preset.architecture, "initializer_range": 0.4})
    tokenizer = load_tokenizer("preset:mistral")
    model = build_random_model(preset, tokenizer, seed=3)
    return save_checkpoint(tmp_path_factory.mktemp("lm-eval") / "peaky", model, tokenizer, "openchat_3.5", {"epoch": 1})


@pytest.fixture(scope="module")
def server(serve_python, checkpoint, tmp_path_factory) -> Iterator[ServerHandle]:
    logs = tmp_path_factory.mktemp("lm-eval-logs")
    handle = deploy_model(f"http://127.0.0.1:{free_port()}", None, checkpoint, served_name="tiny", api_key=KEY,
                          engine="vllm", python=serve_python, log_path=logs / "server.log",
                          extra_args=("--max-model-len", str(MAX_LEN), "--dtype", "float32"), ready_timeout_s=300)
    try:
        yield handle
    finally:
        stop_server(handle.pid)


class Reference:
    """The same checkpoint in transformers (float32): log-likelihoods and greedy continuations."""

    def __init__(self, checkpoint: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from openchat_core.templates.conversation import ConversationTemplate
        from openchat_core.templates.tokenizers import load_tokenizer

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
        self.tokenizer = load_tokenizer(checkpoint)
        self.template = ConversationTemplate.from_tokenizer("openchat_3.5", self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def loglikelihood(self, context: str, continuation: str) -> float:
        """lm-eval's split (`_encode_pair`): trailing context spaces move to the continuation; ids of the whole."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self.encode(context + continuation), self.encode(context)
        with self.torch.no_grad():
            logits = self.model(self.torch.tensor([whole])).logits[0].float()
        logprobs = self.torch.log_softmax(logits, dim=-1)
        return sum(float(logprobs[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))

    def greedy(self, ids: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] = ()) -> list[int]:
        out: list[int] = []
        with self.torch.no_grad():
            for _ in range(max_new_tokens):
                token = int(self.model(self.torch.tensor([ids + out])).logits[0, -1].argmax())
                if token in stop_ids:
                    break
                out.append(token)
        return out


@pytest.fixture(scope="module")
def reference(checkpoint) -> Reference:
    return Reference(checkpoint)


def arguments(sample: dict) -> list[tuple[str, ...]]:
    args = sample["arguments"]
    if isinstance(args, dict):  # lm-eval 0.4.x: {"gen_args_0": {"arg_0": ..., "arg_1": ...}, ...}
        return [tuple(v for _, v in sorted(a.items())) for _, a in sorted(args.items())]
    return [tuple(a) for a in args]


def test_multiple_choice_with_local_completions_scores_like_transformers(server, reference, tmp_path):
    result = run_harness(server.url, "tiny", ["openchat_mc"], tmp_path, include_paths=[TASKS], api_key=KEY)
    samples = sorted(result.samples["openchat_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == 4
    correct = []
    for sample in samples:
        pairs = arguments(sample)
        served = [float(resp[0][0]) for resp in sample["resps"]]  # lm-eval logs them as strings
        expected = [reference.loglikelihood(context, continuation) for context, continuation in pairs]
        assert len(served) == len(sample["doc"]["choices"]) == 3
        assert served == pytest.approx(expected, abs=1e-3)
        correct.append(max(range(3), key=lambda i: expected[i]) == sample["doc"]["answer"])
    assert result.metrics["harness/openchat_mc/acc"] == pytest.approx(sum(correct) / len(correct))


@pytest.mark.parametrize("model", ["local-completions", "local-chat-completions"])
def test_generation_task_outputs_equal_greedy_transformers(server, reference, tmp_path, model):
    result = run_harness(server.url, "tiny", ["openchat_gen"], tmp_path, model=model, include_paths=[TASKS], api_key=KEY)
    samples = sorted(result.samples["openchat_gen"], key=lambda s: s["doc_id"])
    assert len(samples) == 3
    eot = tuple(reference.template.eot_ids) + (reference.tokenizer.eos_token_id,)
    matches = []
    for sample in samples:
        context = arguments(sample)[0][0]
        if model == "local-completions":
            expected = reference.tokenizer.decode(reference.greedy(reference.encode(context), 6, eot))
        else:  # the chat route renders the OpenChat template and strips the answer's first space
            # lm-eval logs the chat as its JsonChatStr named tuple: [json of the messages]
            messages = json.loads(context[0] if isinstance(context, list) else context)
            assert messages[-1]["role"] == "user" and messages[-1]["content"].startswith("Q: ")
            prompt = reference.template.prompt_ids(messages)
            expected = reference.tokenizer.decode(reference.greedy(prompt, 6, eot)).removeprefix(" ")
        expected = expected.split("\n")[0]
        output = sample["resps"][0][0]
        assert output == expected, (model, context)
        matches.append(float(output.strip().lower() == sample["target"].lower()))
    assert result.metrics["harness/openchat_gen/exact_match"] == pytest.approx(sum(matches) / len(matches))


def test_readme_lm_eval_commands_run_against_the_server(server, tmp_path):
    """The README's "Evaluate the endpoint with lm-eval" block, as written, pointed at this server."""
    import os
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    (block,) = re.findall(r"<!-- readme-lm-eval -->\s*```bash\n(.*?)```", (root / "README.md").read_text(), re.S)
    block = (block.replace("http://localhost:18888", server.url).replace("sk-KEY1", KEY)
             .replace("model=openchat-demo", "model=tiny").replace("runs/lm-eval", str(tmp_path))
             .replace(".venv/bin/python", sys.executable))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=root, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    results = [json.loads(p.read_text())["results"] for p in tmp_path.rglob("results_*.json")]
    assert {task for r in results for task in r} == {"openchat_mc", "openchat_gen"}
