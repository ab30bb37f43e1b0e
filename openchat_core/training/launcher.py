"""Start training through DeepSpeed's launcher: the same command on one CPU box or many GPU nodes.

The trainer runs in its own process group, so a crash (or an OOM kill) cannot take down the
caller, and the caller can stop the whole group. Output is streamed line by line to a callback
(the CLI prints it; the Prefect task forwards it to the flow run log).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from openchat_core.ports import free_port
from openchat_core.telemetry import without_telemetry
from openchat_core.templates.tokenizers import cache_root
from openchat_core.training.trainer_config import TrainerConfig

CONFIG_FILE = "trainer_config.json"


# Exceptions a rank raises for bad input or settings: running again cannot help.
NON_RETRYABLE_CAUSES = frozenset({"ValueError", "KeyError", "TypeError", "FileNotFoundError", "MissingSpecialTokenError",
                                  "OverlongSequenceError", "ValidationError", "ConfigError"})


class TrainingFailed(RuntimeError):
    """The training processes exited with an error; the message carries the exit code, root cause and last log lines."""

    def __init__(self, message: str, cause_type: str | None = None) -> None:
        super().__init__(message)
        self.cause_type = cause_type

    @property
    def retryable(self) -> bool:
        """A crash, a kill or a runtime/communication error may pass on a retry (which resumes); bad input will not."""
        return self.cause_type not in NON_RETRYABLE_CAUSES


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is in the pipeline env
        return False
    return torch.cuda.is_available()


def torch_extensions_dir() -> Path:
    """DeepSpeed's JIT-compiled ops (the CPU shm comm op: ~25 s to build) cached per environment, outside the clone.

    One folder per (interpreter prefix, torch, deepspeed): DeepSpeed rebuilds when a different venv
    uses the same folder, so environments must not share it.
    """
    import deepspeed
    import torch

    tag = hashlib.sha256(f"{sys.prefix}|{torch.__version__}|{deepspeed.__version__}".encode()).hexdigest()[:12]
    return cache_root() / "torch_extensions" / tag


def build_command(config_path: Path, num_procs: int, hostfile: str | None = None, master_port: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner"]
    if hostfile:
        cmd += ["--hostfile", hostfile]
    else:
        cmd += ["--num_gpus", str(num_procs), "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(master_port or free_port()), "--no_local_rank", "--module", "openchat_core.training.trainer",
            "--config", str(config_path)]
    return cmd


def launch_env(num_procs: int) -> dict[str, str]:
    env = without_telemetry()
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(torch_extensions_dir()))
    if not cuda_available():
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_procs)))
    return env


def run_training(cfg: TrainerConfig, on_line: Callable[[str], None] = print, tail_lines: int = 40) -> Path:
    """Write the config, launch the ranks, stream their output; returns the output folder or raises TrainingFailed."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / CONFIG_FILE
    config_path.write_text(cfg.model_dump_json(indent=2))
    cmd = build_command(config_path, cfg.train.num_procs, cfg.train.hostfile)
    on_line(f"[openchat.train] launching: {' '.join(cmd)}")
    code, tail = run_process_group(cmd, launch_env(cfg.train.num_procs), on_line, tail_lines)
    if code != 0:
        cause = root_cause(tail)
        cause_type = cause.split(":", 1)[0].rsplit(".", 1)[-1] if ":" in cause else None
        raise TrainingFailed(f"training exited with code {code}: {cause}\n--- last lines ---\n" + "\n".join(tail), cause_type)
    return out


def run_process_group(cmd: list[str], env: dict[str, str], on_line: Callable[[str], None], tail_lines: int = 40) -> tuple[int, list[str]]:
    """Run `cmd` in a new process group, streaming its output; returns (exit code, last lines).

    If the caller is interrupted (Ctrl-C, a Prefect cancellation, or SIGTERM, e.g. `kill` or a
    scheduler stopping the job) the whole group is stopped before the exception propagates, so no
    rank is left running on its own holding GPUs and ports.
    """
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    tail: list[str] = []
    try:
        with _sigterm_raises_system_exit():
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    on_line(line)
                    tail = (tail + [line])[-tail_lines:]
            return proc.wait(), tail
    except BaseException:  # interrupted or cancelled: stop every rank, not just the launcher
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        raise


@contextmanager
def _sigterm_raises_system_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while the group runs, so the cleanup above runs instead of an abrupt exit.

    Only where Python's default action is in place and on the main thread (the only place a handler
    can be set): a host that handles SIGTERM itself, as Prefect's engine does, keeps its handler.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def root_cause(lines: list[str]) -> str:
    """The exception line of a rank's traceback (e.g. "ValueError: ..."), without the launcher's "[rankN]: " prefix."""
    import re

    for line in reversed(lines):
        text = re.sub(r"^\[rank\d+\]:\s*", "", line).strip()
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*?:", text) or text.startswith(("RuntimeError", "ValueError")):
            return text
    return "no exception in the output (killed? out of memory?) - see the last lines"
