"""The MLflow model registry, as this project uses it: versions with tags, `champion`/`challenger` aliases
(never the deprecated stages), a champion history for rollback, and a decision log.

Every decision (promotion, challenger, rollback, manual move) is written to the candidate version's
tags and appended to the registered model's `openchat.decisions` tag, so "why is this version
serving?" is answered from the registry alone.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from openchat_core.models.checkpoint import is_adapter_checkpoint
from openchat_core.templates.tokenizers import cache_root

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "openchat.champion_history"
DECISIONS_TAG = "openchat.decisions"
MAX_LOG = 20  # entries kept in the JSON tags (MLflow tag values are size-limited)
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


_T = TypeVar("_T")
# MLflow error codes that a later attempt may not see (server busy, restarting, timed out).
_TRANSIENT_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED",
                              "ABORTED", "CANCELLED", "UNAVAILABLE"})


class RegistryError(RuntimeError):
    """A registry operation cannot proceed (unknown model/alias/version, nothing to roll back to, ...)."""


class RegistryReadError(RegistryError):
    """Reading registry state failed for a reason other than "not there": the state is unknown, so nothing may be decided."""


class RegistryUnavailable(RegistryReadError, ConnectionError):
    """A read failed in a way a retry may fix (server error or unreachable); a ConnectionError, so IO-retrying tasks retry it."""


def is_absent(exc: BaseException) -> bool:
    """MLflow's "no such registered model / version / alias": the only error that means the thing is not there."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def read_failure(what: str, exc: BaseException) -> RegistryReadError:
    """The error to raise when reading `what` failed with `exc` (which is not "absent")."""
    code = getattr(exc, "error_code", None)
    message = f"could not read {what}: {type(exc).__name__}: {exc}"
    transient = code in _TRANSIENT_CODES or isinstance(exc, (OSError, TimeoutError))
    return (RegistryUnavailable if transient else RegistryReadError)(message)


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    tags: dict[str, str]
    aliases: tuple[str, ...]
    run_id: str | None
    source: str

    def metric(self, name: str) -> float | None:
        value = self.tags.get(f"openchat.metric.{name}")
        return float(value) if value is not None else None


class ModelRegistry:
    """One registered model in one MLflow store."""

    def __init__(self, tracking_uri: str, name: str) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.name = name
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # -- reading ------------------------------------------------------------------------------------
    def _read(self, what: str, call: Callable[[], _T], absent: _T) -> _T:
        """`call()`, or `absent` when MLflow says the thing does not exist; any other failure raises (never "nothing there")."""
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - MLflow raises one exception type for every failure; classified here
            if is_absent(exc):
                return absent
            raise read_failure(f"{what} of registered model {self.name!r} from {self.tracking_uri}", exc) from exc

    def _registered_model(self) -> Any | None:
        return self._read("the registered model", lambda: self.client.get_registered_model(self.name), None)

    def _aliases(self) -> dict[str, str]:
        """alias -> version for this model, in one registry call (empty only when the model does not exist yet)."""
        model = self._registered_model()
        return {alias: str(v) for alias, v in ((model.aliases if model else None) or {}).items()}

    def _info(self, mv: Any, aliases: dict[str, str]) -> VersionInfo:
        held = tuple(a for a in (CHAMPION, CHALLENGER) if aliases.get(a) == str(mv.version))
        return VersionInfo(self.name, str(mv.version), dict(mv.tags or {}), held, mv.run_id, mv.source)

    def _alias_version(self, alias: str) -> str | None:
        return self._aliases().get(alias)

    def by_alias(self, alias: str) -> VersionInfo | None:
        aliases = self._aliases()
        return self._info(self.client.get_model_version(self.name, aliases[alias]), aliases) if alias in aliases else None

    def version(self, version: str | int) -> VersionInfo:
        found = self._read(f"version {version}", lambda: self.client.get_model_version(self.name, str(version)), None)
        if found is None:
            raise RegistryError(f"registered model {self.name!r} has no version {version}")
        return self._info(found, self._aliases())

    def versions(self) -> list[VersionInfo]:
        found = self._read("the versions", lambda: self.client.search_model_versions(f"name = '{self.name}'"), [])
        aliases = self._aliases()
        return sorted((self._info(mv, aliases) for mv in found), key=lambda v: int(v.version))

    def find_by_tag(self, key: str, value: str) -> VersionInfo | None:
        """The newest version whose tag `key` equals `value` (e.g. the same weights digest)."""
        query = f"name = '{self.name}' and tag.`{key}` = '{value}'"
        found = self._read(f"the versions tagged {key}={value}", lambda: self.client.search_model_versions(query), [])
        return self._info(max(found, key=lambda mv: int(mv.version)), self._aliases()) if found else None

    def registered_tags(self) -> dict[str, str]:
        model = self._registered_model()
        return dict((model.tags if model else None) or {})

    def champion_history(self) -> list[str]:
        return json.loads(self.registered_tags().get(HISTORY_TAG, "[]"))

    def decisions(self) -> list[dict[str, Any]]:
        return json.loads(self.registered_tags().get(DECISIONS_TAG, "[]"))

    # -- writing ------------------------------------------------------------------------------------
    def register(self, checkpoint_dir: Path | str, run_id: str | None, tags: dict[str, Any]) -> VersionInfo:
        """Log the checkpoint as a pyfunc model (explicit pip requirements) in `run_id` and register a new version."""
        import mlflow

        from openchat_core.registry.pyfunc import CHECKPOINT_ARTIFACT, OpenChatChatModel, pip_requirements

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        if run_id is None:
            from openchat_core.tracking import default_artifact_location, ensure_experiment

            exp_id = ensure_experiment(self.client, self.name, default_artifact_location(self.tracking_uri))
            run_id = self.client.create_run(exp_id, run_name="register").info.run_id
        status = self.client.get_run(run_id).info.status
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=OpenChatChatModel(),
                                           artifacts={CHECKPOINT_ARTIFACT: str(checkpoint_dir)}, pip_requirements=pip_requirements(),
                                           registered_model_name=self.name)
        self.client.set_terminated(run_id, status=status if status in ("FINISHED", "FAILED", "KILLED") else "FINISHED")
        version = str(info.registered_model_version)
        self.set_tags(version, tags)
        return self.version(version)

    def set_tags(self, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, str(value))

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)
        if alias == CHAMPION:
            self.set_champion_history([v for v in self.champion_history() if v != version] + [version])

    def set_champion_history(self, versions: list[str]) -> None:
        self.client.set_registered_model_tag(self.name, HISTORY_TAG, json.dumps(versions[-MAX_LOG:]))

    def drop_alias(self, alias: str) -> None:
        if self._alias_version(alias):
            self.client.delete_registered_model_alias(self.name, alias)

    def log_decision(self, decision: dict[str, Any]) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **decision}
        log = (self.decisions() + [entry])[-MAX_LOG:]
        self.client.set_registered_model_tag(self.name, DECISIONS_TAG, json.dumps(log))

    # -- resolving ----------------------------------------------------------------------------------
    def resolve(self, ref: str) -> tuple[VersionInfo, Path]:
        """`models:/NAME@alias`, `models:/NAME/VERSION`, `@alias` or a version number -> (version, local checkpoint folder)."""
        m = _URI.match(ref)
        alias = m.group("alias") if m else ref[1:] if ref.startswith("@") else None
        version = m.group("version") if m else None if alias else ref
        if m and m.group("name") != self.name:
            raise RegistryError(f"{ref} names model {m.group('name')!r}, not {self.name!r}")
        info = self.by_alias(alias) if alias else self.version(version)
        if info is None:
            raise RegistryError(f"registered model {self.name!r} has no version with alias {alias!r}")
        return info, self.download(info)

    def download(self, info: VersionInfo) -> Path:
        """The version's checkpoint folder, downloaded once into the local cache (loads in transformers and vLLM)."""
        import mlflow.artifacts

        from openchat_core.digest import text_digest

        # keyed by the store and the version's source too: two stores can both hold "demo-model" v1
        target = cache_root() / "registry" / self.name / f"{info.version}-{text_digest(self.tracking_uri, info.source, length=12)}"
        if (target / "MLmodel").is_file():
            return _checkpoint_in(target)
        from openchat_core.atomic import publish_folder

        mlflow.set_tracking_uri(self.tracking_uri)
        with publish_folder(target) as staging:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.name}/{info.version}", dst_path=str(staging),
                                                tracking_uri=self.tracking_uri)
        return _checkpoint_in(target)


def _checkpoint_in(model_dir: Path) -> Path:
    """The checkpoint folder inside a downloaded pyfunc model (MLmodel names where the artifact landed)."""
    import yaml

    from openchat_core.registry.pyfunc import CHECKPOINT_ARTIFACT

    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    try:
        relative = mlmodel["flavors"]["python_function"]["artifacts"][CHECKPOINT_ARTIFACT]["path"]
    except (KeyError, TypeError):
        raise RegistryError(f"{model_dir} is not an openchat-pipeline registered model (no '{CHECKPOINT_ARTIFACT}' artifact)") from None
    return model_dir / relative


def resolve_model_dir(ref: str, tracking_uri: str | None) -> Path:
    """A local checkpoint folder for a path or a `models:/NAME@alias` / `models:/NAME/VERSION` URI."""
    m = _URI.match(ref)
    if not m:
        path = Path(ref).expanduser()
        if not ((path / "config.json").is_file() or is_adapter_checkpoint(path)):
            raise FileNotFoundError(f"{ref} is neither a checkpoint folder (config.json or a LoRA adapter_config.json) "
                                    f"nor a models:/NAME@ALIAS URI")
        return path
    if not tracking_uri:
        raise RegistryError(f"{ref} needs an MLflow tracking URI (--mlflow-uri or MLFLOW_TRACKING_URI)")
    return ModelRegistry(tracking_uri, m.group("name")).resolve(ref)[1]
