"""The pipeline configuration: one typed, validated model, loaded from YAML and overridable key by key.

Every section forbids unknown keys (a typo is an error, not a silently ignored setting) and every
cross-field rule says how to fix a violation. The whole config is validated before any stage runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from openchat_core.data.settings import DataConfig
from openchat_core.data.weights import WeightPolicy
from openchat_core.evaluation.coding.scoring import CodingOptions
from openchat_core.evaluation.settings import EvalConfig
from openchat_core.models.settings import ModelConfig
from openchat_core.registry.settings import RegistryConfig
from openchat_core.section import ConfigError, Section
from openchat_core.serving.settings import ServeConfig
from openchat_core.templates.settings import TokenizeConfig
from openchat_core.training.settings import TrainConfig

__all__ = ["ConfigError", "DataConfig", "EvalConfig", "ModelConfig", "PipelineConfig", "RegistryConfig", "ServeConfig",
           "StorageConfig", "TokenizeConfig", "TrackingConfig", "TrainConfig", "load_config"]


class StorageConfig(Section):
    root: str = Field("./runs", description="local folder or fsspec URL (s3://bucket/prefix) holding every artifact")


class TrackingConfig(Section):
    uri: str | None = Field(None, description="MLflow tracking URI; default: the store in the storage root (<storage.root>/mlflow.db)")
    experiment: str | None = Field(None, description="MLflow experiment; default: the pipeline name")


class PipelineConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="pipeline name: MLflow experiment, storage prefix")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    data: DataConfig
    weights: WeightPolicy
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    base_dir: str = Field(".", description="folder relative paths are resolved against: the working directory at load time")

    @property
    def tokenizer_source(self) -> str:
        from openchat_core.models.presets import tokenizer_source

        return tokenizer_source(self.tokenize.tokenizer or self.model.base)

    @property
    def registered_model_name(self) -> str:
        return self.registry.model_name or self.name

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def coding_options(self) -> CodingOptions:
        """How coding answers are executed (eval.humaneval_plus, eval.code_*)."""
        from openchat_core.evaluation.coding.scoring import coding_options

        e = self.eval
        return coding_options(self.path(e.humaneval_plus) if e.humaneval_plus else None, e.code_timeout_s, e.code_memory_mb,
                              e.code_workers)


class _Replace:
    """An override's value: replaces the target key whole (a mapping override is not merged key by key)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = _Replace(value)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`train.epochs=5 data.train=[a.jsonl,b.jsonl]`: values are parsed as YAML scalars/lists."""
    data: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=5")
        _set_path(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, _Replace):
            out[key] = value.value
        elif isinstance(value, dict):
            out[key] = _merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} problem(s):"]
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see configs/demo.yaml for every key)"
        lines.append(f"  - {where}: {msg}")
    return "\n".join(lines)


def build_config(data: dict[str, Any], overrides: Sequence[str] | dict[str, Any] = (), source: str = "config",
                 base_dir: str | Path | None = None) -> PipelineConfig:
    """Validate a config mapping plus overrides; relative paths resolve against `base_dir` (default: cwd)."""
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    merged = _merge({"base_dir": str(Path(base_dir or Path.cwd()).resolve()), **data}, extra)
    try:
        return PipelineConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_config(path: Path | str, overrides: Sequence[str] | dict[str, Any] = ()) -> PipelineConfig:
    """Load a YAML pipeline config. Relative paths in it resolve against the working directory
    (like every CLI here), so run from the project root or use absolute paths."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (shipped configs are in configs/)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections (name, data, weights, ...)")
    return build_config(data, overrides, source=str(p))
