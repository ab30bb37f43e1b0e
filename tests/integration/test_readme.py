"""The README's commands work as written: marked blocks are run, and every command it names exists (and vice versa)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _marked_blocks() -> list[str]:
    return re.findall(r"<!-- readme-test -->\s*```bash\n(.*?)```", README, re.S)


def _cli_commands() -> set[str]:
    from openchat_core.cli import build_app

    app = build_app()
    return {c.name or c.callback.__name__ for c in app.registered_commands}


def test_readme_names_only_real_commands_and_documents_every_command():
    named = set(re.findall(r"openchat ([a-z][a-z-]+)", README)) - {"pipeline"}
    commands = _cli_commands()
    assert named - commands == set(), f"README names commands that do not exist: {named - commands}"
    assert commands - named == set(), f"commands missing from the README: {commands - named}"


@pytest.mark.integration
@pytest.mark.parametrize("block", _marked_blocks(), ids=lambda b: b.split("\n")[0][:60])
def test_marked_readme_blocks_run(tmp_path, block):
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "OPENCHAT_CACHE_DIR": os.environ.get("OPENCHAT_CACHE_DIR", str(Path.home() / ".cache" / "openchat-pipeline"))}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    if "pretokenize" in block:
        assert (tmp_path / "runs" / "manual" / "tokens.parquet").is_file()
