"""The deploy stage flow: serve a registered version (default: the champion) behind the OpenAI-compatible app."""

from __future__ import annotations

from typing import Any

from prefect import flow

from openchat_core.config import load_config
from tasks.deploy import deploy_task
from tasks.outputs import layout_for
from tasks.tracking import TrackingContext


@flow(name="openchat-deploy", log_prints=True)
def deploy_flow(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None, alias: str = "champion") -> dict[str, Any]:
    """Start or switch the server to `models:/<registry.model_name>@<alias>`; fails (old model kept) if it does not answer."""
    cfg = load_config(config_path, overrides or [])
    layout = layout_for(cfg)
    return deploy_task(cfg, TrackingContext.for_config(cfg, layout), layout, alias)
