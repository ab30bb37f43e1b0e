"""The base of every config section (unknown keys are errors, assignments are validated) and the config error.

It lives apart from `config.py` so each stage's settings can sit beside its component
(`models/settings.py`, `training/settings.py`, `serving/settings.py`) while `config.py` only
assembles them: components never import the pipeline config, so packages import one way.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config file or override is invalid; the message lists every problem and how to fix it."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
