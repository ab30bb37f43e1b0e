"""vLLM offline-generation worker, run with the serving environment's python.

    $OPENCHAT_SERVE_PYTHON -m openchat_core.evaluation.vllm_worker --model CKPT \\
        --requests in.jsonl --out out.jsonl --max-tokens 512 --stop-token-ids 32000

vLLM cannot live in the pipeline environment (it pins other transformers/fastapi versions), so
`VLLMGenerator` writes prompts as token ids to `in.jsonl` (`{"id": 0, "prompt_token_ids": [...]}`
per line), runs this module in the serving env, and reads `out.jsonl`
(`{"id", "token_ids", "finish_reason"}` per line, written atomically) plus `out.jsonl.meta.json`
(vLLM version, timings).

Sampling follows OpenChat's `run_eval.py`: temperature 0, `stop_token_ids` = the template's EOT
ids, `ignore_eos=True` (only EOT ends an answer), `max_model_len` and `max_num_batched_tokens` =
the model type's context. Additions: float32 by default (comparable with the transformers engine),
eager mode (no graph capture/compilation: faster start on CPU, no numerics change), no tokenizer
(`skip_tokenizer_init`: prompts are ids, text is decoded by the caller). With `--lora ADAPTER
--lora-rank R`, `--model` is the adapter's base and every prompt runs with the adapter
(`enable_lora`, `max_lora_rank` = R rounded up to a rank vLLM accepts, one `LoRARequest`).

Imports only the standard library at module level (vLLM inside `main`): this file must run in
an environment that has neither pyarrow nor the pipeline's other dependencies. The `__main__`
guard matters: vLLM spawns engine processes that re-import the main module.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Greedy vLLM generation from token-id prompts (OpenChat eval settings).")
    parser.add_argument("--model", required=True, help="Hugging Face model folder (a checkpoint)")
    parser.add_argument("--requests", required=True, type=Path, help="JSONL: {id, prompt_token_ids} per line")
    parser.add_argument("--out", required=True, type=Path, help="JSONL output: {id, token_ids, finish_reason} per line")
    parser.add_argument("--max-tokens", required=True, type=int, help="max new tokens per prompt")
    parser.add_argument("--stop-token-ids", required=True, help="comma-separated stop ids (the template's EOT)")
    parser.add_argument("--max-model-len", required=True, type=int, help="context length (the model type's max context)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--lora", help="LoRA adapter folder to apply to every prompt (--model is then its base)")
    parser.add_argument("--lora-rank", type=int, default=None, help="the adapter's largest rank (with --lora)")
    parser.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false",
                        help="allow CUDA graphs / compilation (faster on GPU, slower to start)")
    return parser.parse_args(argv)


def _read_requests(path: Path) -> list[dict]:
    requests = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row.get("id"), int) or not isinstance(row.get("prompt_token_ids"), list):
                    raise ValueError(f"{path}:{number}: expected {{'id': int, 'prompt_token_ids': [int, ...]}}")
                requests.append(row)
    return requests


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    from openchat_core.telemetry import telemetry_defaults

    os.environ.update(telemetry_defaults())  # process start, before vLLM is imported
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU; read when vLLM starts
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    requests = _read_requests(args.requests)
    stop_ids = [int(t) for t in args.stop_token_ids.split(",") if t.strip()]
    started = time.perf_counter()

    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    lora_args, lora_request = {}, None
    if args.lora:
        from vllm.lora.request import LoRARequest

        from openchat_core.models.adapters import vllm_max_lora_rank

        lora_args = {"enable_lora": True, "max_loras": 1, "max_lora_rank": vllm_max_lora_rank(args.lora_rank or 1)}
        lora_request = LoRARequest("adapter", 1, args.lora)
    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
              max_num_batched_tokens=args.max_model_len, tensor_parallel_size=args.tensor_parallel_size,
              enforce_eager=args.enforce_eager, skip_tokenizer_init=True, seed=args.seed, **lora_args)
    loaded = time.perf_counter()
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, stop_token_ids=stop_ids, ignore_eos=True,
                            detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in requests], params, use_tqdm=False,
                           lora_request=lora_request)
    generated = time.perf_counter()

    partial = args.out.with_name(args.out.name + ".partial")
    with partial.open("w", encoding="utf-8") as f:
        for request, output in zip(requests, outputs, strict=True):
            completion = output.outputs[0]
            f.write(json.dumps({"id": request["id"], "token_ids": list(completion.token_ids),
                                "finish_reason": completion.finish_reason}) + "\n")
    meta = {"vllm": vllm.__version__, "worker": __file__, "python": sys.executable, "requests": len(requests),
            "engine_start_s": round(loaded - started, 3), "generate_s": round(generated - loaded, 3),
            "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
            "settings": {"dtype": args.dtype, "max_model_len": args.max_model_len, "enforce_eager": args.enforce_eager,
                         "seed": args.seed, "lora": args.lora, "stop_token_ids": stop_ids, "ignore_eos": True, "temperature": 0.0}}
    args.out.with_name(args.out.name + ".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    partial.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
