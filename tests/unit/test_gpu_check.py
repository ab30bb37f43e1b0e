"""bench/gpu_check.py's CPU counterpart: the same code (attention choice, packed == per-sequence, a packed training
step, the tokens/s and MFU arithmetic) on a tiny model in float32, so the GPU script is not first run on a GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~35 s: a subprocess importing torch and transformers
def test_gpu_check_runs_on_cpu_in_smoke_mode(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["attention"] == "sdpa_varlen" and result["max_logit_diff/sdpa_varlen"] < 1e-4
    assert result["tokens_per_s/sdpa_varlen"] > 0 and "packed attention: sdpa_varlen" in out.stdout


def test_flops_per_token_counts_matmuls_and_causal_attention():
    sys.path.insert(0, str(ROOT))
    from bench.gpu_check import ONE_B, flops_per_token

    class Row:
        def __init__(self, seqlens):
            self.seqlens, self.num_tokens = seqlens, sum(seqlens)

    # one 3-token sequence: mean context (1 + 2 + 3) / 3 = 2
    assert flops_per_token(ONE_B, 1_000, [Row([3])]) == 6 * 1_000 + 6 * ONE_B["num_hidden_layers"] * ONE_B["hidden_size"] * 2
