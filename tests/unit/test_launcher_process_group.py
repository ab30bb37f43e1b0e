"""The launcher stops the whole trainer process group when its caller is interrupted, SIGTERM included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

# A stand-in for DeepSpeed's launcher: it starts a "rank" that would outlive it, then waits.
GROUP = ("import subprocess, sys, time; rank = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
         "print('rank', rank.pid, flush=True); time.sleep(300)")

# The driver restores Python's Ctrl-C handler: a job started in the background by a shell inherits SIGINT ignored.
DRIVER = f"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from openchat_core.training.launcher import run_process_group
run_process_group([sys.executable, "-c", {GROUP!r}], dict(os.environ), lambda line: print(line, flush=True))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone for our purposes
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="checks process state in /proc (Linux)")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupting_the_caller_stops_every_process_of_the_group(signum):
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        line = driver.stdout.readline()
        assert line.startswith("rank "), line
        rank_pid = int(line.split()[1])
        assert _alive(rank_pid)
        driver.send_signal(signum)
        code = driver.wait(timeout=60)
        assert code != 0  # the interruption propagates after the clean-up
        deadline = time.monotonic() + 10
        while _alive(rank_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(rank_pid), "a rank outlived its interrupted launcher"
    finally:
        driver.kill()


def test_exit_code_and_last_lines_come_back():
    from openchat_core.training.launcher import run_process_group

    seen: list[str] = []
    code, tail = run_process_group([sys.executable, "-c", "print('a'); print(''); print('b'); raise SystemExit(3)"],
                                   dict(os.environ), seen.append, tail_lines=1)
    assert code == 3 and seen == ["a", "b"] and tail == ["b"]
