"""Where Prefect keeps its state when a command starts flows (set where the process starts, never in library code)."""

from __future__ import annotations

import os
from pathlib import Path

from openchat_core.config import PipelineConfig
from tasks.outputs import layout_for


def prepare_prefect_home(cfg: PipelineConfig) -> None:
    """Embedded Prefect by default, its SQLite database under a local storage root; a real server if PREFECT_API_URL is set."""
    layout = layout_for(cfg)
    if "PREFECT_API_URL" not in os.environ and not layout.remote:
        home = Path(layout.root) / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str(home))
