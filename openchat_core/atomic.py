"""Atomic writes: a file or folder appears complete or not at all, never half-written (a crash leaves only a staging copy).

The stage folders of the storage layout have their own protocol (storage/layout.py, `_SUCCESS`
markers, also for remote roots); this module is for the local files and folders that
openchat_core writes itself: checkpoints, cached tokenizers and models, result files, markers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write `text` to a sibling and rename it over `path` (readers see the old or the new content, nothing between)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def publish_folder(target: Path | str, *, shared_cache: bool = False) -> Iterator[Path]:
    """Yield a staging folder beside `target`; when the block succeeds, it becomes `target`.

    Default: stage in `<target>.partial` (the name tells readers it is incomplete) and replace an
    existing `target`. `shared_cache=True`, for caches several processes may fill at once: stage in
    a private temporary folder, and if another process published `target` first keep its (identical)
    copy; the staging folder is always removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if shared_cache:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    else:
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    try:
        yield staging
        if not shared_cache:
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        else:
            try:
                staging.rename(target)
            except OSError:  # another process finished first; its copy is identical
                pass
    finally:
        if shared_cache:
            shutil.rmtree(staging, ignore_errors=True)
