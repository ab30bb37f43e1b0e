"""Validation and mixing stream: peak memory stays far below the input size (a 1 GB file must not need 1 GB of RAM).

Peak memory is read from the child's own `VmHWM` (the high-water mark of its address space),
not `getrusage().ru_maxrss`: on Linux the latter survives fork+exec, so a child started from a
large pytest process would report the parent's peak.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHILD = """
import sys
def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith(key))
from openchat_core.data.validate import validate_files
baseline = status_mb("VmRSS:")
report = validate_files([sys.argv[1]], sys.argv[2])
print(report.valid, report.rejected, status_mb("VmHWM:") - baseline)
"""


def _write_jsonl(path: Path, target_bytes: int) -> int:
    line = json.dumps({"items": [{"role": "user", "content": "q " * 200}, {"role": "assistant", "content": "a " * 600}],
                       "condition": "GPT4"}).encode() + b"\n"
    block = line * 1000
    with open(path, "wb") as f:
        for _ in range(max(1, target_bytes // len(block))):
            f.write(block)
        f.write(b"{broken\n")
    return path.stat().st_size // (1024 * 1024)


def _peak_growth_mb(path: Path, out: Path) -> tuple[int, int, int]:
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(out)], capture_output=True, text=True, check=True,
                            timeout=600)
    valid, rejected, growth = map(int, result.stdout.split())
    return valid, rejected, growth


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_validation_peak_memory_is_bounded_by_batches_not_file_size(tmp_path):
    small_mb = _write_jsonl(tmp_path / "small.jsonl", 30 * 1024 * 1024)
    big_mb = _write_jsonl(tmp_path / "big.jsonl", 300 * 1024 * 1024)
    _, small_rejected, small_growth = _peak_growth_mb(tmp_path / "small.jsonl", tmp_path / "out-small")
    valid, rejected, big_growth = _peak_growth_mb(tmp_path / "big.jsonl", tmp_path / "out-big")
    assert small_rejected == rejected == 1 and valid > 100_000
    # Ten times the data may not need noticeably more memory: growth is set by batch size, not file size.
    assert big_growth < small_growth + 0.1 * (big_mb - small_mb), (
        f"peak memory grew {big_growth} MB on {big_mb} MB but {small_growth} MB on {small_mb} MB: the file is not streamed")
    assert big_growth < 0.5 * big_mb


MIX_CHILD = """
import sys
def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith(key))
import polars  # imported before the baseline: its import is not the data's memory
from openchat_core.data.mix import MixPolicy, mix_file
baseline = status_mb("VmRSS:")
report = mix_file(sys.argv[1], sys.argv[2], MixPolicy(), condition_weights={"GPT4": 1.0})
print(report["totals"]["kept"], report["totals"]["duplicate"], status_mb("VmHWM:") - baseline)
"""


def _write_conversations(path: Path, conversations: int) -> int:
    """Unique ~2 KB conversations (every 10th repeats the one before); returns the text size in MB."""
    from openchat_core.data.conversations_io import ConversationWriter

    with ConversationWriter(path) as writer:
        for i in range(conversations):
            n = i - 1 if i % 10 == 9 else i
            writer.write("s.jsonl", i + 1, "GPT4", "", [{"role": "user", "content": f"{n} " + "q " * 300, "weight": None},
                                                        {"role": "assistant", "content": f"{n} " + "a " * 700, "weight": None}])
    return conversations * 2000 // (1024 * 1024)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_mixing_peak_memory_does_not_follow_the_text(tmp_path):
    small_mb = _write_conversations(tmp_path / "small.parquet", 15_000)
    big_mb = _write_conversations(tmp_path / "big.parquet", 150_000)
    peaks = []
    for name in ("small", "big"):
        result = subprocess.run([sys.executable, "-c", MIX_CHILD, str(tmp_path / f"{name}.parquet"), str(tmp_path / f"mix-{name}")],
                                capture_output=True, text=True, check=True, timeout=600)
        kept, duplicates, growth = map(int, result.stdout.split())
        assert duplicates == kept // 9  # every 10th conversation was a copy
        peaks.append(growth)
    small_growth, big_growth = peaks
    assert big_growth < small_growth + 0.3 * (big_mb - small_mb), (
        f"peak memory grew {big_growth} MB on {big_mb} MB of text but {small_growth} MB on {small_mb} MB: the text is held in memory")
