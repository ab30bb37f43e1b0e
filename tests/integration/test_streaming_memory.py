"""Validation streams: peak memory stays far below the input size (a 1 GB file must not need 1 GB of RAM)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHILD = """
import resource, sys
from openchat_core.data.validate import validate_files
report = validate_files([sys.argv[1]], sys.argv[2])
print(report.valid, report.rejected, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_validation_peak_memory_is_bounded_by_batches_not_file_size(tmp_path):
    line = json.dumps({"items": [{"role": "user", "content": "q " * 200}, {"role": "assistant", "content": "a " * 600}],
                       "condition": "GPT4"}).encode() + b"\n"
    target = 300 * 1024 * 1024
    with open(tmp_path / "big.jsonl", "wb") as f:
        block = line * 1000
        for _ in range(target // len(block)):
            f.write(block)
        f.write(b"{broken\n")
    size_mb = (tmp_path / "big.jsonl").stat().st_size // (1024 * 1024)
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "big.jsonl"), str(tmp_path / "out")], capture_output=True,
                         text=True, check=True, timeout=600)
    valid, rejected, peak_mb = map(int, out.stdout.split())
    assert rejected == 1 and valid > 100_000
    assert peak_mb < 0.6 * size_mb, f"peak RSS {peak_mb} MB for a {size_mb} MB input: the file is not streamed"
