"""Run one untrusted solution in a sandboxed subprocess and always come back with a verdict.

The parent side of `sandbox_worker.py` (read its docstring for what the child does). Here: a fresh
scratch folder per problem (owned by the sandbox's own unprivileged uid when we are root, so the
child can write only there), a minimal environment, a new session, a wall-clock limit after which the whole process
group is killed, and the worker's output kept to a short tail. Whatever the answer does (loop,
allocate, fork, delete, crash, print gigabytes), `run_job` returns a `SandboxOutcome` and the
evaluation goes on.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("sandbox_worker.py")
SANDBOX_UID_BASE = 2**31  # far above real users; one fresh uid per problem (see sandbox_worker._drop_root)
_TAIL = 2000


@dataclass(frozen=True)
class SandboxLimits:
    """Per-problem limits. `timeout_s` is wall time for the whole problem (process start + reference + tests)."""

    timeout_s: float = 60.0  # EvalPlus's own per-task cap (EVALPLUS_TIMEOUT_PER_TASK)
    memory_mb: int = 2048
    max_processes: int = 32
    file_mb: int = 16
    per_test_s: float = 10.0  # HumanEval's check() as one test (HumanEval+ inputs get EvalPlus's own limits)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.per_test_s <= 0:
            raise ValueError(f"sandbox time limits must be > 0 seconds, got timeout_s={self.timeout_s}, per_test_s={self.per_test_s}")
        if self.memory_mb < 256:
            raise ValueError(f"sandbox memory_mb={self.memory_mb} is too small for Python + numpy; use >= 256")

    def worker_limits(self) -> dict[str, Any]:
        return {"cpu_s": max(1, int(self.timeout_s)), "memory_bytes": self.memory_mb * 2**20,
                "file_bytes": self.file_mb * 2**20, "max_processes": self.max_processes}


@dataclass(frozen=True)
class SandboxOutcome:
    """`base`/`plus`: "pass" | "fail" | "timeout" | "error" (`plus` None when HumanEval+ was not run)."""

    base: str
    plus: str | None
    error: str | None = None
    isolation: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - _TAIL))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _child_env(scratch: Path, limits: SandboxLimits) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch / "tmp"), "LANG": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "EVALPLUS_MAX_MEMORY_BYTES": str(limits.memory_mb * 2**20)}


def _prepare_scratch(parent: Path | None, uid: int | None) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="openchat-code-", dir=parent))
    (scratch / "tmp").mkdir()
    for path in (scratch, scratch / "tmp"):
        try:
            if uid is not None:
                os.chown(path, uid, uid)
        except OSError:  # a filesystem that refuses unmapped ids: let the sandbox uid write by mode instead
            os.chmod(path, 0o777)
    return scratch


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_job(job: dict[str, Any], limits: SandboxLimits, *, scratch_parent: Path | None = None) -> SandboxOutcome:
    """Run `job` (code, entry_point, and HumanEval `test` or HumanEval+ inputs) in a fresh sandbox."""
    uid = SANDBOX_UID_BASE + secrets.randbelow(2**20) if os.geteuid() == 0 else None
    scratch = _prepare_scratch(scratch_parent, uid)
    try:
        job_path, result_path = scratch / "job.json", scratch / "result.json"
        job_path.write_text(json.dumps({**job, "limits": {**limits.worker_limits(), "uid": uid}, "time_limit_s": limits.per_test_s,
                                        "memory_bytes": limits.memory_mb * 2**20}), encoding="utf-8")
        started = time.monotonic()
        with (scratch / "output.log").open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-I", str(WORKER), str(job_path), str(result_path)],
                                    cwd=scratch, env=_child_env(scratch, limits), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return SandboxOutcome("timeout", "timeout" if job.get("plus_input") is not None else None,
                                      f"killed after the {limits.timeout_s:g} s per-problem time limit",
                                      wall_s=round(time.monotonic() - started, 3))
            _kill_group(proc)  # anything left in its process group
        wall = round(time.monotonic() - started, 3)
        try:
            result = json.loads(result_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            output = _tail(scratch / "output.log")
            return SandboxOutcome("error", None, f"sandbox worker exited with {proc.returncode} and no result"
                                  + (f": {output[-500:]}" if output else ""), wall_s=wall)
        return SandboxOutcome(base=result["base"], plus=result.get("plus"), error=result.get("error"),
                              isolation=result.get("isolation", {}), wall_s=wall)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
