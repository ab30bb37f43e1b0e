"""The lm-eval runner's pure parts: its command line and how its results become MLflow metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from openchat_core.evaluation.harness import harness_command, harness_metrics


def test_results_become_flat_metrics_without_stderr_or_bookkeeping():
    results = {"results": {
        "openchat_mc": {"alias": "openchat_mc", "acc,none": 0.75, "acc_stderr,none": 0.25, "sample_len": 4},
        "gsm": {"exact_match,strict-match": 0.5, "exact_match,flexible-extract": 0.6, "flag,none": True}}}
    assert harness_metrics(results) == {"harness/openchat_mc/acc": 0.75, "harness/gsm/exact_match_strict-match": 0.5,
                                        "harness/gsm/exact_match_flexible-extract": 0.6}


def test_command_uses_the_remote_tokenizer_for_completions_and_the_chat_template_for_chat(tmp_path):
    completions = harness_command("http://127.0.0.1:9/", "tiny", ["a", "b"], tmp_path, include_paths=[Path("/t")],
                                  limit=3, api_key="k")
    args = completions[completions.index("--model_args") + 1]
    assert "base_url=http://127.0.0.1:9/v1/completions" in args and "tokenizer_backend=remote" in args
    assert "auth_token=k" in args and "--apply_chat_template" not in completions
    assert completions[completions.index("--tasks") + 1] == "a,b" and completions[-2:] == ["--limit", "3"]
    chat = harness_command("http://h", "tiny", ["a"], tmp_path, model="local-chat-completions")
    assert "base_url=http://h/v1/chat/completions" in chat[chat.index("--model_args") + 1]
    assert "--apply_chat_template" in chat
    with pytest.raises(ValueError, match="local-completions"):
        harness_command("http://h", "tiny", ["a"], tmp_path, model="hf")
