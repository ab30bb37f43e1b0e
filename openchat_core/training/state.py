"""Resumable training state: where a run stopped, written only once DeepSpeed's state is fully on disk.

`state/step_<global step>/` holds DeepSpeed's checkpoint (weights, optimizer, ...). Its
`openchat_state.json` is written last, by rank 0 after a barrier: a state folder without it is
half-written and is never resumed from.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from openchat_core.atomic import write_text_atomic

STATE_DIR = "state"
MARKER = "openchat_state.json"


@dataclass(frozen=True)
class ResumePoint:
    global_step: int
    epoch: int          # the epoch to continue in
    step_in_epoch: int  # batches of that epoch already done
    order_digest: str

    @property
    def tag(self) -> str:
        return f"step_{self.global_step:08d}"


def write_marker(out_dir: Path, point: ResumePoint) -> None:
    folder = Path(out_dir) / STATE_DIR / point.tag
    write_text_atomic(folder / MARKER, json.dumps(asdict(point)) + "\n")


def latest_resume_point(out_dir: Path) -> ResumePoint | None:
    points = []
    for marker in (Path(out_dir) / STATE_DIR).glob(f"step_*/{MARKER}"):
        points.append(ResumePoint(**json.loads(marker.read_text())))
    return max(points, key=lambda p: p.global_step) if points else None


def prune_states(out_dir: Path, keep: ResumePoint) -> None:
    """Drop every state folder but `keep` (complete or not): states are large, only the newest is useful."""
    for folder in (Path(out_dir) / STATE_DIR).glob("step_*"):
        if folder.name != keep.tag:
            shutil.rmtree(folder, ignore_errors=True)
