"""Server settings: one pydantic model, and the command line generated from it.

`python -m openchat_core.serving --help` lists exactly these fields (flags are generated from the
field names and descriptions, so the CLI and the settings cannot drift apart). Secrets can come
from the environment instead of the command line, because argv is visible to every local user in
`ps`: `OPENCHAT_API_KEYS` (comma-separated) and `OPENCHAT_ADMIN_KEY`.

Light module: pydantic and the standard library only.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from openchat_core.section import Section

API_KEYS_ENV = "OPENCHAT_API_KEYS"
ADMIN_KEY_ENV = "OPENCHAT_ADMIN_KEY"

EngineKind = Literal["vllm", "transformers"]
DEFAULT_PORT = 18888  # OpenChat's


def keys_from_env(name: str = API_KEYS_ENV, environ: typing.Mapping[str, str] | None = None) -> list[str]:
    """The comma-separated API keys in env var `name` (blank entries dropped); [] when unset."""
    raw = (os.environ if environ is None else environ).get(name, "")
    return [k.strip() for k in raw.split(",") if k.strip()]
DType = Literal["auto", "float32", "bfloat16", "float16"]


class ServeSettings(BaseModel):
    """Everything `build_app` and `serve` need. Defaults are the safe local ones (127.0.0.1, no prompt logging)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # What to serve
    model: Path = Field(description="Checkpoint folder to serve (config.json, safetensors, tokenizer, openchat.json).")
    served_name: str | None = Field(None, description="Name clients put in `model`; default: the model type name. "
                                                      "The model type name and its aliases are accepted too.")
    registry_version: str | None = Field(None, description="Registry version being served (shown in /v1/models, "
                                                           "system_fingerprint and metrics).")
    model_type: str | None = Field(None, description="OpenChat model type; default: read from the checkpoint's openchat.json.")
    engine: EngineKind = Field("vllm", description="vllm: vLLM's async engine (serving env). transformers: the built-in "
                                                   "continuous-batching engine, for machines without vLLM.")
    lora: list[str] = Field(default_factory=list, description="More LoRA adapters on the served base, NAME=PATH each "
                                                              "(repeat the flag): clients choose one with `model: NAME`. "
                                                              "vllm engine only.")
    max_loras: int | None = Field(None, ge=1, description="vLLM: adapters in one batch; default: the adapters served + 1 "
                                                          "(room for a new champion adapter deployed beside them).")
    max_lora_rank: int | None = Field(None, ge=1, description="vLLM: largest LoRA rank the engine accepts; default: the "
                                                              "served adapters' largest, rounded up to a rank vLLM supports. "
                                                              "Set it higher to deploy higher-rank adapters without "
                                                              "reloading the base.")

    # Network
    host: str = Field("127.0.0.1", description="Interface to bind; keep 127.0.0.1 behind an HTTPS gateway.")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="TCP port (OpenChat's default is 18888).")
    timeout_keep_alive: int = Field(5, ge=1, description="Seconds an idle keep-alive connection stays open.")
    allowed_origins: list[str] = Field(default_factory=list, description="CORS origins to allow; empty: no CORS headers.")

    # Security
    api_keys: list[SecretStr] = Field(default_factory=list, description=f"Allowed API keys (Bearer); empty: no check. "
                                                                         f"Prefer the {API_KEYS_ENV} env var (comma-separated).")
    admin_key: SecretStr | None = Field(None, description=f"Key for /admin/* (model switch); unset: admin routes are off. "
                                                           f"Prefer the {ADMIN_KEY_ENV} env var.")

    # Request log
    log_file: Path | None = Field(None, description="Rotating request log, one JSON line per request; unset: no request log.")
    log_max_mb: int = Field(128, ge=1, description="Size at which the request log rotates.")
    log_max_count: int = Field(10, ge=1, description="Rotated request log files to keep.")
    log_prompts: bool = Field(False, description="Also log prompts and outputs (personal data: off by default).")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Server log level (uvicorn and openchat_core).")

    # Engine
    dtype: DType = Field("auto", description="Weights/activations dtype. auto: bfloat16 for vLLM (its CPU kernels' fast "
                                             "path), float32 for transformers on CPU.")
    max_model_len: int | None = Field(None, ge=16, description="Cap on the context length; default: the model type's "
                                                               "max context, bounded by the model's position embeddings.")
    max_num_seqs: int = Field(32, ge=1, description="Most sequences decoded together (vLLM max_num_seqs / transformers batch).")
    kv_cache_gib: float | None = Field(None, gt=0, description="vLLM KV cache size in GiB; default 1 on CPU, "
                                                               "vLLM's gpu_memory_utilization on GPU. "
                                                               "VLLM_CPU_KVCACHE_SPACE, if set, wins.")
    enforce_eager: bool = Field(True, description="vLLM: no CUDA graphs / torch.compile (fast start; turn off on GPU for speed).")
    seed: int = Field(0, description="Engine seed (per-request `seed` still makes a request reproducible).")
    torch_threads: int | None = Field(None, ge=1, description="transformers engine: torch intra-op threads; default "
                                                              "half the cores (more threads stall on a busy machine).")

    # Chat behaviour
    default_max_tokens: int | None = Field(None, ge=1, description="Completion budget when a request gives none; "
                                                                   "default: the rest of the context (OpenChat's rule).")
    enable_system_prompt: bool = Field(True, description="Use system messages (merged into the conversation's system "
                                                         "field). Off: they are dropped, as OpenChat's server does by default.")

    # Model switch
    smoke_prompt: str = Field("Hello", description="User message of the smoke test run before a model goes live.")
    smoke_max_tokens: int = Field(4, ge=1, description="Token budget of the smoke test.")
    smoke_timeout_s: float = Field(120.0, gt=0, description="Seconds the smoke test may take.")
    drain_timeout_s: float = Field(300.0, ge=0, description="Seconds a replaced model may finish its in-flight requests "
                                                            "before it is shut down.")

    @field_validator("lora")
    @classmethod
    def _lora_pairs(cls, values: list[str]) -> list[str]:
        names: set[str] = set()
        for value in values:
            name, sep, path = value.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"--lora {value!r}: expected NAME=PATH, e.g. --lora support=runs/lora/ep_2")
            if name.strip() in names:
                raise ValueError(f"--lora {value!r}: the name {name.strip()!r} is given twice; give each adapter its own name")
            names.add(name.strip())
        return values

    def lora_adapters(self) -> list[tuple[str, Path]]:
        """The `--lora NAME=PATH` values as (name, path) pairs, in the order given."""
        pairs = (value.partition("=") for value in self.lora)
        return [(name.strip(), Path(path.strip()).expanduser()) for name, _, path in pairs]

    @field_validator("api_keys")
    @classmethod
    def _keys_not_blank(cls, keys: list[SecretStr]) -> list[SecretStr]:
        if any(not k.get_secret_value().strip() for k in keys):
            raise ValueError("API keys must be non-empty strings")
        return keys

    @model_validator(mode="after")
    def _admin_key_differs(self) -> ServeSettings:
        if self.admin_key is not None:
            admin = self.admin_key.get_secret_value()
            if not admin.strip():
                raise ValueError("admin_key must be a non-empty string (or unset to turn admin routes off)")
            if any(k.get_secret_value() == admin for k in self.api_keys):
                raise ValueError("admin_key must differ from every API key: a client key must not be able to switch models")
        return self

    def resolved_dtype(self) -> str:
        """The dtype the engine gets; see the `dtype` field for why the defaults differ per engine."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.engine == "vllm" else "float32"

    def api_key_values(self) -> list[str]:
        return [k.get_secret_value() for k in self.api_keys]

    def admin_key_value(self) -> str | None:
        return self.admin_key.get_secret_value() if self.admin_key is not None else None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(annotation: object) -> object:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def make_arg_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per `ServeSettings` field (help = the field description)."""
    parser = argparse.ArgumentParser(
        prog="python -m openchat_core.serving",
        description="OpenChat OpenAI-compatible server (FastAPI + vLLM or transformers engine).",
        argument_default=argparse.SUPPRESS,  # unset flags fall back to the pydantic defaults
    )
    for name, field in ServeSettings.model_fields.items():
        annotation = _unwrap_optional(field.annotation)
        kwargs: dict[str, object] = {"help": field.description, "dest": name}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is list:  # `--flag a b` and `--flag a --flag b` both give [a, b]
            kwargs["nargs"] = "*"
            kwargs["action"] = "extend"
            kwargs["metavar"] = "VALUE"
        elif typing.get_origin(annotation) is Literal:
            kwargs["choices"] = list(typing.get_args(annotation))
        if name == "model":
            kwargs["required"] = True
        parser.add_argument(_flag(name), **kwargs)
    return parser


def settings_from_args(argv: list[str] | None = None, environ: typing.Mapping[str, str] | None = None) -> ServeSettings:
    """Parse the command line (plus the secret env vars) into validated settings.

    Keys given on the command line win over the environment. Validation errors exit with the
    pydantic message, which names the field and the rule.
    """
    env = os.environ if environ is None else environ
    parser = make_arg_parser()
    values = vars(parser.parse_args(argv))
    if "api_keys" not in values and keys_from_env(API_KEYS_ENV, env):
        values["api_keys"] = keys_from_env(API_KEYS_ENV, env)
    if "admin_key" not in values and env.get(ADMIN_KEY_ENV):
        values["admin_key"] = env[ADMIN_KEY_ENV]
    try:
        return ServeSettings.model_validate(values)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


class ServeConfig(Section):
    """`serve:` in the pipeline config: whether and where the pipeline deploys its champion (the server's own flags are ServeSettings)."""

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
        return keys_from_env(self.api_keys_env) if self.api_keys_env else []
