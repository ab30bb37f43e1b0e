"""The vLLM engine's client side (request/response files, subprocess, errors) against a fake worker: no vLLM needed."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from openchat_core.evaluation.generation import Generation
from openchat_core.evaluation.vllm_generator import VLLMGenerator, VLLMWorkerError
from openchat_core.serve_env import repo_root
from tests.unit.eval_models import save_tiny_checkpoint

FAKE_WORKER = r'''
import argparse, json, os, sys
args = sys.argv[1:]
assert args[:2] == ["-m", "openchat_core.evaluation.vllm_worker"], args
p = argparse.ArgumentParser()
for name in ("--model", "--requests", "--out", "--max-tokens", "--stop-token-ids", "--max-model-len", "--dtype"):
    p.add_argument(name)
a = p.parse_args(args[2:])
record = {"argv": args, "pythonpath": os.environ.get("PYTHONPATH", ""), "kv": os.environ.get("VLLM_CPU_KVCACHE_SPACE")}
open(os.environ["FAKE_RECORD"], "w").write(json.dumps(record))
mode = os.environ.get("FAKE_MODE", "ok")
if mode == "fail":
    print("RuntimeError: Unsupported CPU attention configuration: head_dim=16", file=sys.stderr)
    sys.exit(3)
stop = int(a.stop_token_ids.split(",")[0])
rows = [json.loads(l) for l in open(a.requests)]
if mode == "missing":
    rows = rows[:-1]
with open(a.out, "w") as f:
    for r in rows:
        i = r["id"]
        if i % 2 == 0:
            ids, reason = [306, 947, stop], "stop"  # stop id included, as vLLM returns it
        else:
            ids, reason = [306] * int(a.max_tokens), "length"
        f.write(json.dumps({"id": i, "token_ids": ids, "finish_reason": reason}) + "\n")
open(a.out + ".meta.json", "w").write(json.dumps({"vllm": "fake", "engine_start_s": 0.0, "generate_s": 0.0}))
'''


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("eval-vllm-client") / "ckpt")


@pytest.fixture
def fake_python(tmp_path, monkeypatch) -> Path:
    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE_WORKER)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{worker}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "record.json"))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    return python


def test_requests_responses_and_stop_handling(checkpoint, fake_python, tmp_path):
    engine = VLLMGenerator(checkpoint, python=fake_python)
    assert engine.stop_token_ids == [32000] and engine.max_model_len == 8192
    out = engine.generate([[1, 2, 3], [1, 4], [1, 5, 6, 7]], 5)
    text = engine.tokenizer.decode([306, 947])
    assert out == [Generation(text, (306, 947, 32000), "stop"),
                   Generation(engine.tokenizer.decode([306] * 5), (306,) * 5, "length"),
                   Generation(text, (306, 947, 32000), "stop")]
    record = json.loads((tmp_path / "record.json").read_text())
    argv = record["argv"]
    assert argv[argv.index("--stop-token-ids") + 1] == "32000"
    assert argv[argv.index("--max-tokens") + 1] == "5" and argv[argv.index("--dtype") + 1] == "float32"
    assert record["pythonpath"].split(":")[0] == str(repo_root())  # this checkout's code runs in the worker
    assert record["kv"] == "1"
    assert engine.describe()["vllm"] == "fake" and engine.last_run["wall_s"] >= 0


def test_worker_failure_reports_log_tail_and_command(checkpoint, fake_python, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_MODE", "fail")
    engine = VLLMGenerator(checkpoint, python=fake_python, log_dir=tmp_path / "logs")
    with pytest.raises(VLLMWorkerError, match=r"(?s)exit code 3.*head_dim=16.*Command: .*vllm_worker.*transformers"):
        engine.generate([[1, 2]], 4)
    assert "head_dim=16" in (tmp_path / "logs/vllm_worker.log").read_text()


def test_missing_results_are_an_error(checkpoint, fake_python, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "missing")
    with pytest.raises(VLLMWorkerError, match="returned 1 results for 2 prompts"):
        VLLMGenerator(checkpoint, python=fake_python).generate([[1, 2], [1, 3]], 4)


def test_prompt_plus_answer_must_fit_the_context(checkpoint, fake_python):
    engine = VLLMGenerator(checkpoint, python=fake_python, max_model_len=16)
    with pytest.raises(ValueError, match="exceed max_model_len=16"):
        engine.generate([[1] * 10], 8)
