"""Content digests: the identity of inputs for caching, lineage and "is this the same data?" checks."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 4 * 1024 * 1024


def file_digest(path: Path | str, length: int = 16) -> str:
    """sha256 of a file's bytes (streamed), shortened to `length` hex characters."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()[:length]


def files_digest(paths: Iterable[Path | str], length: int = 16) -> str:
    """Digest of several files, order-independent (sorted by name), covering names and contents.

    A folder (a `datasets` save_to_disk folder) counts as every file under it, with its relative path.
    """
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        h.update(path.name.encode())
        if path.is_dir():
            for inner in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(inner.relative_to(path).as_posix().encode())
                h.update(file_digest(inner, 64).encode())
        else:
            h.update(file_digest(path, 64).encode())
    return h.hexdigest()[:length]


def text_digest(*parts: str, length: int = 16) -> str:
    """Digest of strings, e.g. a cache key made of input digests and options."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:length]


def git_revision() -> str:
    """The checkout's short commit (recorded on registered versions), or "unknown" outside git."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
