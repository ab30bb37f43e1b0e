"""Where every artifact lives: one layout object mapping (pipeline, stage, key/run) to paths under a root.

The root is a local folder by default or an fsspec URL (s3://bucket/prefix, gs://..., memory://...).
Stage outputs are *content-addressed*: a stage's folder is named by a digest of everything that
decides its content (input digests, options, tool versions), so an unchanged re-run finds its
outputs and does no work, and a failed run resumes from the stages that completed. A folder counts
only once its `_SUCCESS` marker exists; it is built in a `.partial` sibling and renamed (locally)
or uploaded and then marked (remote), so a crash never leaves a stage that looks complete.

Layout:
    <root>/mlflow.db                          default MLflow tracking + registry store (local roots)
    <root>/mlartifacts/                       default MLflow artifact root
    <root>/<pipeline>/stages/<stage>/<key>/   cached stage outputs (+ _SUCCESS)
    <root>/<pipeline>/runs/<run>/             per-run records (manifest.json, summaries)
    <root>/serving/                           deployment state and request logs
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUCCESS_MARKER = "_SUCCESS"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{kind} {value!r} must start with a letter or digit and use only letters, digits, '.', '_' and '-'")
    return value


def is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


def scratch_root() -> Path:
    """Local working space for remote roots: stages are built here, published folders are downloaded here."""
    return Path(os.environ.get("OPENCHAT_SCRATCH", Path.home() / ".cache" / "openchat-pipeline" / "scratch"))


def upload_folder(local: Path, url: str, marker: str = SUCCESS_MARKER) -> None:
    """Copy a local folder to an fsspec URL, the file named `marker` last: the copy counts as complete only once it exists.

    The local folder is kept (a trainer continues from it). Used for stage folders and per-epoch checkpoints.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    last = local / marker
    if not last.is_file():
        raise FileNotFoundError(f"{local} has no {marker}: it is not complete and must not be published")
    for file in sorted(local.rglob("*")):
        if file.is_file() and file != last:
            fs.put_file(str(file), f"{path}/{file.relative_to(local).as_posix()}")
    fs.put_file(str(last), f"{path}/{marker}")


def download_folder(url: str, local: Path, marker: str = SUCCESS_MARKER) -> Path:
    """Copy a published folder to `local` (into a staging sibling, renamed when complete); raises if it is not complete."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache(path)
    try:
        fs.info(f"{path}/{marker}")
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} is not complete (no {marker}): nothing to download") from None
    staging = local.with_name(f"{local.name}.partial-{uuid.uuid4().hex[:8]}")
    fs.get(path.rstrip("/") + "/", str(staging), recursive=True)
    shutil.rmtree(local, ignore_errors=True)
    local.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(local)
    return local


def remove_published(url: str) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.rm(path, recursive=True)


def complete_children(url: str, marker: str = SUCCESS_MARKER) -> list[str]:
    """Names of the sub-folders of `url` that hold `marker` (published and complete); [] when `url` does not exist."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache(path)
    try:
        found = fs.glob(f"{path.rstrip('/')}/*/{marker}")
    except FileNotFoundError:
        return []
    return sorted(p.rstrip("/").split("/")[-2] for p in found)


def local_mlflow_tracking_uri(root: Path) -> str:
    """The default MLflow tracking + registry store of a local storage root (the pipeline and `openchat up` share it)."""
    return f"sqlite:///{root}/mlflow.db"


def local_mlflow_artifact_root(root: Path) -> str:
    """Where MLflow puts artifacts for a local storage root (beside the store, not in the working directory)."""
    return (root / "mlartifacts").as_uri()


@dataclass(frozen=True)
class StorageLayout:
    """Paths for one pipeline under one storage root. Immutable; cheap to pass to tasks."""

    root: str
    pipeline: str

    def __post_init__(self) -> None:
        _check_name("pipeline name", self.pipeline)
        if not is_remote(self.root):
            object.__setattr__(self, "root", str(Path(self.root.removeprefix("file://")).expanduser().resolve()))

    # -- locations ---------------------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def stage_dir(self, stage: str, key: str) -> str:
        return self._join(self.pipeline, "stages", _check_name("stage", stage), _check_name("key", key))

    def run_dir(self, run: str) -> str:
        return self._join(self.pipeline, "runs", _check_name("run", run))

    def serving_dir(self) -> str:
        return self._join("serving")

    def local_serving_dir(self) -> Path:
        """The serving state (admin key, server log) of this machine: under a local root, else in local scratch."""
        return Path(self.serving_dir()) if not self.remote else scratch_root() / "serving"

    def mlflow_tracking_uri(self) -> str:
        if self.remote:
            raise ValueError("a remote storage root has no default MLflow store; set tracking.uri to your MLflow server")
        return local_mlflow_tracking_uri(Path(self.root))

    def mlflow_artifact_root(self) -> str:
        return self._join("mlartifacts") if self.remote else local_mlflow_artifact_root(Path(self.root))

    # -- completion --------------------------------------------------------------------------------
    def is_complete(self, path: str) -> bool:
        return self._fs_exists(f"{path.rstrip('/')}/{SUCCESS_MARKER}")

    @contextmanager
    def building(self, stage: str, key: str) -> Iterator[Path]:
        """Build a stage's outputs in a local scratch folder; on success publish it and mark it complete.

        Yields the local folder to write into. On an exception nothing is published.
        """
        final = self.stage_dir(stage, key)
        if self.remote:
            local = scratch_root() / f"{stage}-{key}-{uuid.uuid4().hex[:8]}"
        else:
            local = Path(f"{final}.partial-{uuid.uuid4().hex[:8]}")
        local.mkdir(parents=True, exist_ok=False)
        try:
            yield local
            (local / SUCCESS_MARKER).write_text(json.dumps({"stage": stage, "key": key}) + "\n")
            self._publish(local, final)
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def _publish(self, local: Path, final: str) -> None:
        if not self.remote:
            target = Path(final)
            if target.exists():  # a concurrent run finished first, or a stale incomplete folder
                if self.is_complete(final):
                    return
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            local.rename(target)
            return
        upload_folder(local, final)  # the marker last: the folder counts only now

    def local_copy(self, path: str) -> Path:
        """A local path for a complete published folder (stage output, epoch checkpoint): itself when local, else a cached download."""
        if not is_remote(path):  # a local root, or a local folder given by a person (e.g. --checkpoints)
            return Path(path)
        target = scratch_root() / "downloads" / path.replace("://", "_").replace("/", "_")
        if not (target / SUCCESS_MARKER).exists():
            download_folder(path, target)
        return target

    def local_file(self, path: str) -> str:
        """A local path for a file inside a complete published folder (e.g. a stage's tokens.parquet)."""
        if not is_remote(path):
            return path
        folder, _, name = path.rstrip("/").rpartition("/")
        return str(self.local_copy(folder) / name)

    def work_dir(self, stage: str, key: str) -> Path:
        """Where a long stage (training) keeps its local working state: the stage folder itself for local roots."""
        if not self.remote:
            return Path(self.stage_dir(stage, key))
        return scratch_root() / "work" / self.pipeline / _check_name("stage", stage) / _check_name("key", key)

    # -- small files -------------------------------------------------------------------------------
    def write_json(self, path: str, data: Any) -> None:
        """Write JSON atomically (temp file + rename locally; single put remotely)."""
        text = json.dumps(data, indent=2, default=str) + "\n"
        if not self.remote:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(text)
            tmp.replace(target)
            return
        fs, p = self._fs(path)
        with fs.open(p, "w") as f:
            f.write(text)

    def read_json(self, path: str) -> Any:
        if not self.remote:
            return json.loads(Path(path).read_text())
        fs, p = self._fs(path)
        with fs.open(p, "r") as f:
            return json.load(f)

    def exists(self, path: str) -> bool:
        return self._fs_exists(path)

    # -- fsspec plumbing ---------------------------------------------------------------------------
    def _fs(self, path: str):
        import fsspec

        return fsspec.core.url_to_fs(path)

    def _fs_exists(self, path: str) -> bool:
        if not self.remote:
            return Path(path).exists()
        fs, p = self._fs(path)
        fs.invalidate_cache(p)  # another process (a trainer, another worker) may have changed it since this one listed it
        try:  # not fs.exists(): some filesystems answer False for any error, and a failed read is not "not there"
            fs.info(p)
        except FileNotFoundError:
            return False
        return True
