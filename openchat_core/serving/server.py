"""`serve(settings)`: run the app under uvicorn in this process (the CLI and the deploy helper call it).

vLLM spawns engine-core processes, so whatever calls `serve` must be guarded by
`if __name__ == "__main__":` (`python -m openchat_core.serving` is).
"""

from __future__ import annotations

import logging
import os

from openchat_core.serving.settings import ServeSettings

STARTUP_FAILED_EXIT = 3  # uvicorn's own exit code for a failed lifespan start-up


class ServerStartupError(RuntimeError):
    """The app did not start (usually: the model failed to load or failed its smoke test)."""


def serve(settings: ServeSettings) -> None:
    """Serve until SIGINT/SIGTERM. Raises `ServerStartupError` if the model cannot be brought up."""
    import uvicorn

    from openchat_core.serving.app import build_app

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("openchat_core").setLevel(level)
    app = build_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                            access_log=False, timeout_keep_alive=settings.timeout_keep_alive, lifespan="on")
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise ServerStartupError(f"the server did not start (model {settings.model}); see the log above")
