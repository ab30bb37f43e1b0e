"""The deploy task: serve the registry's champion (start the server, or switch the running one), record where."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from openchat_core.config import PipelineConfig
from openchat_core.markdown import markdown_table
from openchat_core.registry.deployment import deploy_registered
from storage import StorageLayout
from tasks.common import publish_markdown
from tasks.tracking import TrackingContext


@task(name="deploy", cache_policy=NONE)
def deploy_task(cfg: PipelineConfig, tracking: TrackingContext, layout: StorageLayout, alias: str = "champion") -> dict[str, Any]:
    """Make `models:/<name>@<alias>` live at serve.host:port after a smoke prompt; the old model serves until then."""
    logger = get_run_logger()
    extra = ("--max-model-len", str(cfg.serve.max_model_len)) if cfg.serve.max_model_len else ()
    record = deploy_registered(tracking.uri, cfg.registered_model_name, alias=alias, url=cfg.serve.url,
                               state_dir=layout.local_serving_dir(), engine=cfg.serve.engine, api_keys=cfg.serve.api_keys(),
                               smoke_prompt=cfg.serve.smoke_prompt, extra_args=extra)
    logger.info("serving %s v%s at %s/v1 (%s engine, pid %s)", record["served_name"], record["registry_version"], record["url"],
                record["engine"], record["pid"])
    shown = {k: record[k] for k in ("served_name", "registry_version", "openai_base_url", "engine", "pid", "started_server")}
    publish_markdown("deployment", f"## Deployment\n\n{markdown_table([shown])}\n\n```python\nfrom openai import OpenAI\n"
                     f"client = OpenAI(base_url=\"{record['openai_base_url']}\", api_key=\"...\")\n"
                     f"client.chat.completions.create(model=\"{record['served_name']}\", messages=[{{\"role\": \"user\", \"content\": \"Hi\"}}])\n```",
                     description=f"Where {record['served_name']} is served")
    return record
