"""The evaluation library stays light: no orchestration, tracking or engine imports at import time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODULES = ["matchers", "math_answer", "task_types", "eval_data", "generation", "generators", "transformers_generator", "vllm_generator",
           "vllm_worker", "summary", "runner", "view", "grading.math_grader", "harness"]
FORBIDDEN = ["prefect", "mlflow", "vllm", "torch", "transformers", "pyarrow", "pandas"]


def test_importing_the_evaluation_modules_pulls_in_no_heavy_or_orchestration_package():
    code = "\n".join([f"import openchat_core.evaluation.{m}" for m in MODULES] + [
        "import sys", f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == ""
