"""Sharded Parquet outputs: a folder of `part-NNNNN.parquet` files named, in order, by `manifest.json`.

A distributed data stage (Ray) writes one shard per block instead of one file; every reader (the
next stage, the trainer, OpenChat-compatible tools) takes either a single Parquet file or such a
folder. The manifest is the only source of truth for which shards exist and in what order: a folder
without one is refused (it may be a half-written output), a shard the manifest names but that is
missing is refused, and stray files beside the shards are ignored. Rows are the shards' rows in
manifest order, so row order does not depend on how a cluster cut the data into blocks.

Manifest: `{"format": "openchat-shards/1", "rows": N, "shards": [{"path": "part-00000.parquet", "rows": n0}, ...],
"metadata": {...}}` where `metadata` holds the Parquet schema metadata shared by all shards (e.g. `metadata_json`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = "openchat-shards/1"


class ShardsError(ValueError):
    """A sharded output that cannot be read safely (no manifest, a missing shard, a wrong format)."""


def shard_name(index: int) -> str:
    """The file name of shard `index` (zero-padded so a plain listing sorts like the manifest)."""
    return f"part-{index:05d}.parquet"


@dataclass(frozen=True)
class Manifest:
    """The shards of one output, in row order, with their row counts and the shared schema metadata."""

    shards: tuple[tuple[str, int], ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(rows for _, rows in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "rows": self.rows, "shards": [{"path": p, "rows": r} for p, r in self.shards],
                "metadata": self.metadata}


def is_sharded(path: Path | str) -> bool:
    """True for a folder output (sharded); False for a single Parquet file."""
    return Path(path).is_dir()


def write_manifest(folder: Path | str, shards: Sequence[tuple[str, int]], metadata: dict[str, Any] | None = None) -> Path:
    """Write `folder/manifest.json` last, after every shard it names exists (its presence marks the folder complete)."""
    folder = Path(folder)
    for name, _ in shards:
        if not (folder / name).is_file():
            raise ShardsError(f"{folder}: shard {name} is named in the manifest but was not written")
    manifest = Manifest(tuple((name, int(rows)) for name, rows in shards), dict(metadata or {}))
    target = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.partial"
    tmp.write_text(json.dumps(manifest.to_json(), indent=1), encoding="utf-8")
    tmp.replace(target)
    return target


def read_manifest(folder: Path | str) -> Manifest:
    """The manifest of a sharded folder; fails closed (never "no shards") when it is absent or unreadable."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ShardsError(f"{folder}: a folder output needs {MANIFEST} (written last by the stage that made it); "
                          f"without it the folder may be half-written. Rerun the stage that produced it.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ShardsError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
        shards = tuple((str(s["path"]), int(s["rows"])) for s in data["shards"])
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, ShardsError):
            raise
        raise ShardsError(f"{path}: unreadable manifest ({e})") from None
    for name, _ in shards:
        if Path(name).name != name:
            raise ShardsError(f"{path}: shard path {name!r} must be a plain file name inside the folder")
        if not (folder / name).is_file():
            raise ShardsError(f"{path}: shard {name} is missing; rerun the stage that produced {folder}")
    return Manifest(shards, dict(data.get("metadata") or {}))


def shard_paths(path: Path | str) -> list[Path]:
    """The Parquet files holding `path`'s rows, in row order: the file itself, or a folder's shards by its manifest."""
    path = Path(path)
    if path.is_dir():
        return [path / name for name, _ in read_manifest(path).shards]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return [path]
