"""Request log: one JSON line per request in a size-rotated file.

What is logged: time, request id, route, status, latency, the served model and registry version,
token counts, finish reasons, sampling parameters. What is never logged: API keys or any header.
Prompts and outputs only with `--log-prompts`, because they are user data.

Each app gets its own `logging.Logger` (a unique name, `propagate=False`) so two apps in one
process, or a test, never share handlers, and `close()` releases the file.
"""

from __future__ import annotations

import json
import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

# Keys the chat route may add to a record that contain user data; dropped unless log_prompts.
PROMPT_KEYS = frozenset({"messages", "outputs", "system", "condition_text"})


class RequestLog:
    def __init__(self, path: Path | str, *, max_mb: int = 128, backup_count: int = 10, log_prompts: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_prompts = log_prompts
        self._logger = logging.getLogger(f"openchat_core.serving.requests.{id(self):x}")
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False
        self._handler = RotatingFileHandler(self.path, maxBytes=max_mb * 1024 * 1024, backupCount=backup_count,
                                            encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)

    def write(self, record: dict[str, Any]) -> None:
        if not self.log_prompts:
            record = {k: v for k, v in record.items() if k not in PROMPT_KEYS}
        self._logger.info(json.dumps(record, ensure_ascii=False, default=str))

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()
