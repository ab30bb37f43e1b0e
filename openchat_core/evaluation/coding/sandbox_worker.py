"""Sandbox worker: runs ONE model-written solution against its tests, inside the limits `sandbox.py` asks for.

Started by `sandbox.run_job` as `python -I sandbox_worker.py JOB RESULT` in a fresh scratch folder
(the current directory). Standalone on purpose: `-I` gives it no project path, and it imports only
the standard library and `evalplus` (for the HumanEval+ input/output check and its guard), so the
untrusted code shares no state with the pipeline.

Order matters, each step before any model-written code runs:
1. isolate: a new network namespace (no interface but a down loopback: no network at all) and a new
   PID namespace whose first process runs the tests, so when it ends every process it forked ends
   too (a fork bomb cannot outlive its problem). Root uses plain namespaces; another user tries a
   user namespace; what held is reported (`isolation`);
2. limits (setrlimit): CPU seconds, address space, file size, no core dumps; after dropping root,
   a process count (RLIMIT_NPROC does not bind root);
3. drop root to an unused uid/gid of its own, keeping only the right to read files: files the
   pipeline owns cannot be written or deleted;
4. fork the runner (PID 1 of the new namespace, killed if this worker dies) which computes the
   reference outputs from the canonical solution, then applies evalplus's `reliability_guard`
   (Python-level: no os.fork/kill/remove/rmtree, no open), blocks socket creation in Python, and
   runs the candidate with evalplus's per-input time limits.

The result (one JSON object) goes to RESULT through a pipe from the runner; if the runner dies
(CPU limit, memory, a signal) the worker records how. A hostile answer could forge its own result
(it runs in this process tree); the sandbox keeps it from harming the machine, not from cheating.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
CAP_DAC_READ_SEARCH = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> bool:
    return _libc().unshare(ctypes.c_int(flags)) == 0


def _drop_root(uid: int) -> None:
    """An unprivileged uid/gid of its own (no other process shares it, so RLIMIT_NPROC counts only this
    sandbox's processes), keeping only CAP_DAC_READ_SEARCH: Python's own files may sit under a root-only
    folder (pyenv in /root), so the tests must still read every file, yet write or delete none of ours.
    `no_new_privs` stops an exec of a setuid binary from getting root back."""
    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl failed")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    keep = 1 << CAP_DAC_READ_SEARCH
    data = (_CapData * 2)(_CapData(keep, keep, 0), _CapData(0, 0, 0))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def isolate(limits: dict) -> dict:
    """Namespaces, rlimits and user drop (steps 1-3); returns what actually holds."""
    isolation = {"network": "python-socket-block", "processes": "process-group", "user": "same-user"}
    root = os.geteuid() == 0
    if (root and _unshare(CLONE_NEWNET | CLONE_NEWPID)) or (not root and _unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID)):
        isolation["network"], isolation["processes"] = "netns", "pidns"
    elif (root and _unshare(CLONE_NEWNET)) or (not root and _unshare(CLONE_NEWUSER | CLONE_NEWNET)):
        isolation["network"] = "netns"
    cpu = int(limits["cpu_s"])
    memory = int(limits["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limits["file_bytes"]),) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if root and limits.get("drop_root", True):
        _drop_root(int(limits["uid"]))
        isolation["user"] = "unprivileged"
        nproc = int(limits["max_processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    return isolation


def _block_sockets() -> None:
    """Python-level only (ctypes can bypass it); the network namespace is what really holds when present."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in the coding-eval sandbox")

    socket.socket = refuse  # type: ignore[assignment, misc]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.socketpair = refuse  # type: ignore[assignment]


def _check_humaneval(job: dict) -> dict:
    """Base tests without HumanEval+: HumanEval's own `check(candidate)` (what human-eval runs)."""
    from evalplus.eval.utils import reliability_guard, swallow_io, time_limit

    program = job["code"] + "\n\n" + job["test"] + f"\n\ncheck({job['entry_point']})\n"
    reliability_guard(maximum_memory_bytes=int(job["memory_bytes"]))
    _block_sockets()
    try:
        with swallow_io(), time_limit(float(job["time_limit_s"])):
            exec(compile(program, "<solution>", "exec"), {"__name__": "__main__"})
        return {"base": "pass", "plus": None, "error": None}
    except BaseException as exc:  # the answer's exception is its verdict, whatever it is
        status = "timeout" if type(exc).__name__ == "TimeoutException" else "fail"
        return {"base": status, "plus": None, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def _in_child(work) -> dict:
    """Run `work()` (which applies evalplus's destructive guard) in a forked child and return its dict.

    EvalPlus runs base and plus inputs in separate processes; its guard disables `os.getcwd` for
    good, so a second check in the same process would crash. Processes the answer forks also
    reach the end of `work`; only the child we forked reports.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        me = os.getpid()
        try:
            result = work()
        except BaseException as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        if os.getpid() == me:
            os.write(write_fd, json.dumps(result).encode())
        os._exit(0)
    os.close(write_fd)
    data = _read_all(read_fd)
    _, status = os.waitpid(pid, 0)
    try:
        return json.loads(data)
    except ValueError:
        return {"ok": False, "error": _describe_status(status)}


def _check_evalplus(job: dict) -> dict:
    """Base and plus inputs, EvalPlus's way: reference outputs from the canonical solution, then evalplus's
    `unsafe_execute` per input set with its per-input time limits, stopping at the first failure (its default).

    Pass = `unsafe_execute` finished without a failure. (evalplus 0.3.1's `untrusted_check` also requires
    its progress counter to reach the end, which the HumanEval/32 `find_zero` oracle never advances, so
    it fails every answer to HumanEval/32, even the canonical solution; we do not copy that.)
    """
    from types import SimpleNamespace

    from evalplus.config import DEFAULT_GT_TIME_LIMIT_FACTOR, DEFAULT_MIN_TIME_LIMIT
    from evalplus.eval import _SUCCESS, _UNKNOWN, unsafe_execute
    from evalplus.gen.util import trusted_exec

    def check(inputs: list) -> dict:
        expected, ref_time = trusted_exec(job["canonical"], inputs, job["entry_point"], record_time=True)
        time_limits = [max(DEFAULT_MIN_TIME_LIMIT, DEFAULT_GT_TIME_LIMIT_FACTOR * t) for t in ref_time]
        stat, progress = SimpleNamespace(value=_UNKNOWN), SimpleNamespace(value=0)
        _block_sockets()
        unsafe_execute("humaneval", job["entry_point"], job["code"], inputs, expected, time_limits, float(job["atol"]),
                       True, stat, [False] * len(inputs), progress)
        return {"ok": stat.value == _SUCCESS, "error": None if stat.value == _SUCCESS else "did not load, or failed an input"}

    base = _in_child(lambda: check(job["base_input"]))
    plus = _in_child(lambda: check(job["plus_input"]))
    error = None if base["ok"] and plus["ok"] else f"{'base' if not base['ok'] else 'plus'} tests: " + (
        base["error"] if not base["ok"] else plus["error"])
    return {"base": "pass" if base["ok"] else "fail", "plus": "pass" if base["ok"] and plus["ok"] else "fail", "error": error}


def run_tests(job: dict) -> dict:
    return _check_evalplus(job) if job.get("plus_input") is not None else _check_humaneval(job)


def _runner(job: dict, write_fd: int) -> None:
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    me = os.getpid()
    try:
        result = run_tests(job)
    except BaseException as exc:
        result = {"base": "error", "plus": None, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    if os.getpid() == me:  # a process the answer forked reaches here too; only the runner reports
        os.write(write_fd, json.dumps(result).encode())
    os._exit(0)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or sig == signal.SIGKILL:
            return f"killed by {signal.Signals(sig).name} (CPU limit or sandbox kill)"
        return f"killed by {signal.Signals(sig).name}"
    return f"exited with status {os.WEXITSTATUS(status)} without a result (memory limit or crash)"


def main(job_path: str, result_path: str) -> int:
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    isolation = isolate(job["limits"])
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _runner(job, write_fd)
    os.close(write_fd)
    data = _read_all(read_fd)
    _, status = os.waitpid(pid, 0)
    try:
        result = json.loads(data)
    except ValueError:
        result = {"base": "error", "plus": None, "error": _describe_status(status)}
    result["isolation"] = isolation
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
