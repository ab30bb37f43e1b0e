"""The pipeline configuration: one typed, validated model, loaded from YAML and overridable key by key.

Every section forbids unknown keys (a typo is an error, not a silently ignored setting) and every
cross-field rule says how to fix a violation. The whole config is validated before any stage runs.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Discriminator, Field, Tag, ValidationError, field_validator

from openchat_core.data.mix import MixPolicy
from openchat_core.data.rules import DEFAULT_MAX_LINE_BYTES
from openchat_core.data.sources import DataSource
from openchat_core.data.weights import WeightPolicy
from openchat_core.evaluation.coding.sandbox import SandboxLimits
from openchat_core.models.settings import ModelConfig
from openchat_core.section import Section
from openchat_core.evaluation.coding.scoring import CodingOptions
from openchat_core.serving.settings import DEFAULT_PORT
from openchat_core.templates.chat_template import ChatTemplateOptions
from openchat_core.templates.model_types import canonical_model_type_name
from openchat_core.training.settings import TrainConfig


class ConfigError(ValueError):
    """A config file or override is invalid; the message lists every problem and how to fix it."""


class StorageConfig(Section):
    root: str = Field("./runs", description="local folder or fsspec URL (s3://bucket/prefix) holding every artifact")


class TrackingConfig(Section):
    uri: str | None = Field(None, description="MLflow tracking URI; default: the store in the storage root (<storage.root>/mlflow.db)")
    experiment: str | None = Field(None, description="MLflow experiment; default: the pipeline name")


# A source is a path (or glob) or a mapping; the discriminator keeps a mistake in a mapping from also
# being reported as "not a string".
SourceEntry = Annotated[Annotated[str, Tag("path")] | Annotated[DataSource, Tag("source")],
                        Discriminator(lambda v: "path" if isinstance(v, str) else "source")]


class DataConfig(Section):
    train: list[SourceEntry] = Field(description="training sources: paths/globs, or {path, format, condition, max_conversations, sample_fraction}")
    eval: list[SourceEntry] = Field(default_factory=list, description="held-out sources for eval loss (same forms as train)")
    max_rejected_fraction: float | None = Field(None, ge=0, le=1, description="fail validation above this rejected share")
    max_line_bytes: int = Field(DEFAULT_MAX_LINE_BYTES, gt=0, description="lines longer than this are rejected without being loaded")
    mix: MixPolicy = Field(default_factory=MixPolicy, description="dedup across sources, length filters, sampling seed")

    @field_validator("train")
    @classmethod
    def _train_not_empty(cls, value: list[str | DataSource]) -> list[str | DataSource]:
        if not value:
            raise ValueError("data.train is empty: list at least one JSONL file or glob")
        return value

    def resolve(self, paths: Sequence[str], base: Path) -> list[Path]:
        """Expand globs relative to the config's folder; each pattern must match at least one file."""
        found: list[Path] = []
        for pattern in paths:
            full = pattern if Path(pattern).is_absolute() else str(base / pattern)
            matches = sorted(Path(p) for p in glob.glob(full))
            if not matches:
                raise ConfigError(f"data path {pattern!r} matches no file (looked for {full})")
            found.extend(matches)
        return found

    @staticmethod
    def as_sources(entries: Sequence[str | DataSource]) -> list[DataSource]:
        """Every entry as a DataSource (a plain path is `{path: ...}`: format auto, no condition, no cap)."""
        return [DataSource(path=e) if isinstance(e, str) else e for e in entries]


_CT = ChatTemplateOptions()  # the chat_template defaults, defined once there


class TokenizeConfig(Section):
    model_type: str = Field("openchat_3.5", description="conversation template (see `openchat model-types`)")
    tokenizer: str | None = Field(None, description="tokenizer folder or preset; default: model.base")
    per_sequence_loss: bool = False
    workers: int = Field(1, ge=1, le=64)
    batch_rows: int = Field(2048, ge=1)
    # Model type `chat_template` only: where the C-RLFT condition is rendered (templates/chat_template.py).
    condition_format: str = Field(_CT.condition_format, description="chat_template: the condition line; must contain {condition}")
    condition_placement: Literal["system", "user"] = Field(
        _CT.placement, description="chat_template: condition line in a system message, or before the first user message")
    inference_condition: str = Field(_CT.inference_condition, description="chat_template: condition when a request gives none")

    def chat_template_options(self) -> ChatTemplateOptions:
        return ChatTemplateOptions(self.condition_format, self.condition_placement, self.inference_condition)

    @field_validator("condition_format")
    @classmethod
    def _valid_condition_format(cls, value: str) -> str:
        ChatTemplateOptions(condition_format=value)
        return value

    @field_validator("model_type")
    @classmethod
    def _known_model_type(cls, value: str) -> str:
        try:
            canonical_model_type_name(value)
        except KeyError as e:
            raise ValueError(str(e).strip('"')) from None
        return value


class EvalConfig(Section):
    condition: str = Field("", description="generation condition; empty = the model type's inference condition")
    eval_data: str | None = Field(None, description="root of eval sets (<root>/<task_type>/<task>.jsonl)")
    eval_sets: list[str] = Field(default_factory=list, description="task-name prefixes; empty = all under eval_data")
    engine: Literal["auto", "vllm", "transformers"] = "auto"
    max_new_tokens: int = Field(512, ge=1, description="answer length cap per question (OpenChat's eval uses 512)")
    limit_per_task: int | None = Field(None, ge=1, description="evaluate only the first N questions of each task (quick runs)")
    harness: list[str] = Field(default_factory=list, description="lm-eval tasks run against each candidate served on a "
                               "temporary loopback port (names from harness_include or installed tasks that need no "
                               "download); scores are harness/<task>/<metric>; empty = off")
    harness_include: str | None = Field(None, description="folder of local lm-eval task YAML files for eval.harness")
    harness_model: Literal["local-completions", "local-chat-completions"] = Field(
        "local-completions", description="lm-eval model: completions (log-likelihood and generation tasks) or chat "
                                         "completions (generation tasks only, through the OpenChat template)")
    harness_limit: int | None = Field(None, ge=1, description="lm-eval --limit: the first N documents of each task")
    primary_metric: str = Field("eval/loss", description="metric that picks the best epoch, e.g. eval/loss, gen/accuracy "
                                                         "gen/coding/humaneval/pass1_plus or harness/<task>/acc")
    direction: Literal["minimize", "maximize"] = "minimize"
    tie_break: Literal["later_epoch", "lower_loss"] = "later_epoch"
    humaneval_plus: str | None = Field(None, description="coding eval: local HumanEvalPlus .jsonl(.gz) replacing the problems "
                                                         "in the coding rows (never downloaded)")
    code_timeout_s: float = Field(SandboxLimits.timeout_s, gt=0, description="coding eval: wall-clock limit per problem")
    code_memory_mb: int = Field(SandboxLimits.memory_mb, ge=256, description="coding eval: address-space limit per problem")
    code_workers: int = Field(CodingOptions.workers, ge=1, description="coding eval: problems run in parallel sandboxes")


class RegistryConfig(Section):
    model_name: str | None = Field(None, description="registered model name; default: the pipeline name")
    promotion_margin: float = Field(0.0, ge=0, description="candidate must beat the champion by at least this much")
    merge_adapter: bool = Field(False, description="LoRA runs: register the base with the adapter merged in (a full checkpoint) "
                                                   "instead of the adapter and its base lineage")


class ServeConfig(Section):
    enabled: bool = Field(True, description="deploy the champion at the end of the pipeline")
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    engine: Literal["auto", "vllm", "transformers"] = Field("auto", description="auto: vLLM when the serving env has it")
    api_keys_env: str | None = Field(None, description="name of an env var holding comma-separated API keys (never put keys in YAML)")
    smoke_prompt: str = "Hello!"
    max_model_len: int | None = Field(None, ge=64, description="cap the served context (saves KV-cache memory)")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def api_keys(self) -> list[str]:
        from openchat_core.serving.settings import keys_from_env

        return keys_from_env(self.api_keys_env) if self.api_keys_env else []


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
