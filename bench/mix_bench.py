"""Mixing and deduplicating 1,000,000 conversations from 3 sources: polars (ours) against a plain-Python dict.

    .venv/bin/python bench/mix_bench.py [--conversations 1000000] [--no-write]

The corpus (not timed) is a validated `conversations.parquet` of three sources ("gpt4", "gpt3",
"web"; conditions GPT4 1.0, GPT3 0.1, web 0.1) with 2-6 turns of random words. A quarter of the
conversations are copies of another source's, some with different whitespace, so dedup has work.

Both sides do the same work, each in its own fresh process so that its peak RSS is its own:
read the Parquet, length-filter (at most 6 turns, 4,000 characters), remove exact duplicates of the
normalised text keeping the higher-weight copy, cap the "web" source at 100,000 with a seeded
sample, write the kept rows to Parquet. The baseline is the strongest plain-Python version: Arrow
batches -> `to_pylist`, `re.sub` normalisation, a dict keyed on a 16-byte blake2b digest (not the
text, which would hold every conversation in memory), `random.Random(seed).sample` for the cap,
and the same batch-wise copy of kept rows. Both must report the same counts (checked).
Results: bench/RESULTS.md, "Mixing and dedup".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WEIGHTS = {"GPT4": 1.0, "GPT3": 0.1, "web": 0.1}
SOURCES = (("gpt4", "GPT4", 0.3), ("gpt3", "GPT3", 0.4), ("web", "web", 0.3))
WEB_CAP = 100_000
MAX_TURNS, MAX_CHARS = 6, 4000
WORDS = [f"w{i}" for i in range(5000)] + ["the", "a", "is", "of", "and", "to", "in"] * 200


def make_corpus(path: Path, n: int, seed: int = 0) -> None:
    from openchat_core.data.conversations_io import ConversationWriter

    rng = random.Random(seed)
    made: list[tuple[str, list[dict]]] = []
    with ConversationWriter(path, batch_rows=8192) as writer:
        for i in range(n):
            name, condition, _ = rng.choices(SOURCES, weights=[s[2] for s in SOURCES])[0]
            if made and rng.random() < 0.25:  # a copy of an earlier conversation, sometimes re-spaced
                system, items = made[rng.randrange(len(made))]
                if rng.random() < 0.5:
                    items = [{**m, "content": "  " + m["content"].replace(" ", "  ")} for m in items]
            else:
                turns = rng.choice((2, 2, 2, 4, 4, 6, 8))
                items = [{"role": "user" if t % 2 == 0 else "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(5, 60))),
                          "weight": None} for t in range(turns)]
                system = "" if rng.random() < 0.8 else "You are helpful."
                if len(made) < 200_000:
                    made.append((system, items))
            writer.write(f"{name}.jsonl", i + 1, condition, system, items)


def run_ours(src: Path, out: Path) -> dict:
    from openchat_core.data.mix import MixPolicy, SourceLimits, mix_file

    sources = [SourceLimits(name, (f"{name}.jsonl",), WEB_CAP if name == "web" else None) for name, _, _ in SOURCES]
    report = mix_file(src, out, MixPolicy(max_turns=MAX_TURNS, max_chars=MAX_CHARS, seed=0), sources, WEIGHTS)
    return report["totals"]


def run_baseline(src: Path, out: Path) -> dict:
    import hashlib
    import re

    import numpy as np
    import pyarrow.parquet as pq

    from openchat_core.data.mix import _copy_rows

    space = re.compile(r"\s+")
    totals = {"input": 0, "too_short": 0, "too_long": 0, "duplicate": 0, "sampled_out": 0, "kept": 0}
    best: dict[bytes, tuple[float, int]] = {}  # key -> (-weight, order) of the copy to keep
    source_of: dict[int, str] = {}
    order = 0
    for batch in pq.ParquetFile(src).iter_batches(batch_size=8192, columns=["source", "condition", "system", "items"]):
        for row in batch.to_pylist():
            totals["input"] += 1
            items = row["items"]
            chars = len(row["system"] or "") + sum(len(m["content"]) for m in items)
            if len(items) > MAX_TURNS or chars > MAX_CHARS:
                totals["too_long"] += 1
            else:
                text = space.sub(" ", row["system"] or "").strip() + "\x1d" + "\x1e".join(
                    m["role"] + "\x1f" + space.sub(" ", m["content"]).strip() for m in items)
                key = hashlib.blake2b(text.encode(), digest_size=16).digest()
                candidate = (-WEIGHTS.get(row["condition"], 0.0), order)
                held = best.get(key)
                if held is None or candidate < held:
                    best[key] = candidate
                    source_of[order] = row["source"]
                    if held is not None:
                        del source_of[held[1]]
                totals["duplicate"] += held is not None
            order += 1
    web = sorted(o for o, s in source_of.items() if s == "web.jsonl")
    dropped = set(web) - set(random.Random(0).sample(web, min(WEB_CAP, len(web)))) if len(web) > WEB_CAP else set()
    totals["sampled_out"] = len(dropped)
    kept = np.array(sorted(o for o in source_of if o not in dropped), dtype=np.int64)
    out.mkdir(parents=True, exist_ok=True)
    totals["kept"] = _copy_rows(src, out / "conversations.parquet", kept, 4096)
    return totals


def _child(which: str, src: Path, out: Path) -> None:
    start = time.perf_counter()
    totals = (run_ours if which == "ours" else run_baseline)(src, out)
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec
    peak_mib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib, "totals": totals}))


def _measure(which: str, src: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__, "--child", which, "--src", str(src), "--out", str(out)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--child", choices=("ours", "baseline"))
    parser.add_argument("--src", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.src, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "conversations.parquet"
        start = time.perf_counter()
        make_corpus(src, args.conversations)
        print(f"corpus: {args.conversations:,} conversations, {src.stat().st_size / 2**20:.0f} MiB Parquet, made in {time.perf_counter() - start:.0f} s")
        results = {which: _measure(which, src, Path(tmp) / which) for which in ("baseline", "ours")}
    base, ours = results["baseline"], results["ours"]
    if base["totals"] != ours["totals"]:
        raise SystemExit(f"the two sides disagree: {base['totals']} vs {ours['totals']}")
    n = args.conversations
    rows = [("plain Python dict (baseline)", base), ("polars (ours)", ours)]
    table = ["| | seconds | conversations/s | peak RSS (MiB) |", "|---|---|---|---|"]
    table += [f"| {name} | {r['seconds']:.1f} | {n / r['seconds']:,.0f} | {r['peak_rss_mib']:,.0f} |" for name, r in rows]
    table.append(f"| ratio, ours / baseline | | **{base['seconds'] / ours['seconds']:.2f}×** | {ours['peak_rss_mib'] / base['peak_rss_mib']:.2f}× |")
    t = ours["totals"]
    body = (f"{n:,} conversations from 3 sources (bench/mix_bench.py: 25% cross-source copies, half re-spaced), one Parquet file "
            f"of the validated schema. Work: length filter, dedup of normalised text keeping the higher-weight copy, seeded cap of one "
            f"source at {WEB_CAP:,}, kept rows written. Each side in its own fresh process (peak RSS = that process's maximum, "
            f"interpreter and imports included). Both reported the same counts: {t['duplicate']:,} duplicates, {t['too_long']:,} too long, "
            f"{t['sampled_out']:,} sampled out, {t['kept']:,} kept.\n\n" + "\n".join(table))
    print(body)
    if not args.no_write:
        from bench.results import write_section

        write_section("Mixing and dedup", body)


if __name__ == "__main__":
    main()
