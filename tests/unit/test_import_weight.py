"""DESIGN's layering rules, checked: light modules import nothing heavy; openchat_core never imports Prefect or flows/tasks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
HEAVY = ["torch", "transformers", "deepspeed", "vllm", "prefect", "mlflow"]
LIGHT_MODULES = ["openchat_core.schema", "openchat_core.config", "openchat_core.data.validate", "openchat_core.data.weights",
                 "openchat_core.data.demo", "openchat_core.templates.model_types", "openchat_core.templates.conversation",
                 "openchat_core.models.presets", "openchat_core.training.sampler", "openchat_core.registry.selection",
                 "openchat_core.serving.protocol", "openchat_core.serving.app", "openchat_core.cli"]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_module_imports_nothing_heavy(module):
    code = f"import {module}, sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


def test_openchat_core_never_imports_prefect_flows_or_tasks():
    offenders = []
    for path in (ROOT / "openchat_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("prefect", "flows", "tasks")]
    assert offenders == []
