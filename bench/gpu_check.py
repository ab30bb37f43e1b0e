"""GPU readiness in a few minutes, offline, with only what scripts/setup.sh installs (run by bench/gpu_check.sh).

    .venv/bin/python bench/gpu_check.py [--steps 10] [--batch-max-len 8192] [--peak-tflops 989]
    .venv/bin/python bench/gpu_check.py --smoke          # the same code on CPU with a tiny model (what CI runs)

1. The packed attention this machine gets (flash-attn when installed, else torch's built-in varlen
   attention on CUDA, else sdpa_varlen), and packed == per-sequence logits with it (tiny model, bf16 on CUDA).
2. A bf16 packed training step (forward, weighted loss, backward, AdamW) on a ~1.1B-parameter
   Llama (TinyLlama's shape, random init, the 32k Mistral vocabulary): tokens/s and MFU, for the
   chosen attention and for sdpa_varlen (the fallback) on the same rows, so the ratio shows what
   the varlen kernel buys.

MFU = achieved FLOP/s / peak. FLOPs per token: 6 x parameters (matmuls, forward + backward) plus
causal attention, 6 x layers x hidden x (mean context per token); peak: bf16 dense of the
detected card (H100/H200 989 TFLOPS, A100 312), or --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ONE_B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
             max_position_embeddings=4096, vocab_size=32002)
TINY = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=4096, vocab_size=32002)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def build(shape: dict, attn: str, dtype, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from openchat_core.models.model_factory import _prepare_attention

    torch.manual_seed(0)
    config = LlamaConfig(**shape, attn_implementation=_prepare_attention(attn), use_cache=False, tie_word_embeddings=False)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model


def packed_rows(n_rows: int, row_len: int, seed: int):
    """Rows of realistic chat lengths (bench/length_mix.py) packed up to `row_len` tokens, ~60% supervised."""
    import numpy as np
    import torch

    from bench.length_mix import realistic_lengths
    from openchat_core.training.data import PackedBatch

    rng = np.random.default_rng(seed)
    lengths = iter(np.minimum(realistic_lengths(n_rows * row_len // 50 + 100, seed), row_len))
    rows = []
    for _ in range(n_rows):
        lens, used = [], 0
        while True:
            n = int(next(lengths))
            if used + n > row_len:
                break
            lens.append(n)
            used += n
        ids = torch.tensor(rng.integers(3, 32000, used)).unsqueeze(0)
        pos = torch.tensor(np.concatenate([np.arange(n) for n in lens])).unsqueeze(0)
        weights = torch.tensor((rng.random(used) < 0.6).astype("float32"))
        rows.append(PackedBatch(ids, pos, torch.roll(ids[0], -1), weights, lens))
    return rows


def check_packed_equals_per_sequence(attn: str, dtype, device) -> float:
    """Largest |packed - per-sequence| logit difference on a tiny model (per-sequence runs use plain sdpa)."""
    import numpy as np
    import torch

    from openchat_core.training.loss import packed_forward

    packed_model = build(TINY, attn, dtype, device)
    reference = build(TINY, "sdpa", dtype, device)
    reference.load_state_dict(packed_model.state_dict())
    batch = packed_rows(1, 512, seed=1)[0].to(device)
    with torch.no_grad():
        packed = packed_forward(packed_model, batch).logits[0].float()
        starts = np.cumsum([0] + batch.seqlens)
        separate = torch.cat([reference(input_ids=batch.input_ids[:, s:e], use_cache=False).logits[0].float()
                              for s, e in zip(starts[:-1], starts[1:])])
    return float((packed - separate).abs().max())


def train_steps(shape: dict, attn: str, dtype, device, rows, warmup: int) -> list[float]:
    """Seconds per full training step (forward, weighted CE, backward, AdamW) on each row after `warmup` rows."""
    import torch

    from openchat_core.training.loss import weighted_sums

    model = build(shape, attn, dtype, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    times, losses = [], []
    for i, row in enumerate(rows):
        row = row.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _, _ = weighted_sums(model, row)
        (loss / max(len(row.seqlens), 1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        losses.append(float(loss))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if not all(map(lambda x: x == x and abs(x) != float("inf"), losses)):
        raise RuntimeError(f"non-finite loss with {attn}: {losses}")
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return times


def flops_per_token(shape: dict, n_params: int, rows) -> float:
    tokens = sum(r.num_tokens for r in rows)
    mean_context = sum(n * (n + 1) / 2 for r in rows for n in r.seqlens) / tokens  # causal: a token sees its prefix
    return 6 * n_params + 6 * shape["num_hidden_layers"] * shape["hidden_size"] * mean_context


def peak_tflops(device, override: float | None) -> float | None:
    import torch

    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main() -> None:
    from openchat_core.telemetry import telemetry_defaults

    os.environ.update(telemetry_defaults())  # process start
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-max-len", type=int, default=8192)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU in float32: checks this script, measures nothing")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    from openchat_core.models.model_factory import default_attn_implementation

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        sys.exit("no CUDA device: run with --smoke to check the script on CPU")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = ONE_B if cuda else TINY
    attn = default_attn_implementation() if cuda else "sdpa_varlen"
    print(f"device: {torch.cuda.get_device_name(device) if cuda else 'cpu'}; torch {torch.__version__}; packed attention: {attn}")

    result: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "attention": attn}
    for name in dict.fromkeys([attn, "sdpa_varlen"]):
        diff = check_packed_equals_per_sequence(name, dtype, device)
        limit = 3e-2 if cuda else 1e-4
        print(f"packed == per-sequence logits ({name}, {dtype}): max |diff| {diff:.2e} (limit {limit:g})")
        if diff > limit:
            raise SystemExit(f"packed logits differ from per-sequence logits with {name}: {diff} > {limit}")
        result[f"max_logit_diff/{name}"] = diff

    steps = 2 if args.smoke else args.steps
    warmup = 0 if args.smoke else args.warmup
    rows = packed_rows(steps + warmup, 256 if args.smoke else args.batch_max_len, seed=0)
    measured = rows[warmup:]
    n_params = sum(p.numel() for p in build(shape, "sdpa", torch.float32 if not cuda else dtype, "meta").parameters())
    per_token = flops_per_token(shape, n_params, measured)
    peak = peak_tflops(device, args.peak_tflops)
    print(f"model: {n_params / 1e9:.2f}B parameters, {args.batch_max_len if cuda else 256}-token packed rows, "
          f"{sum(r.num_tokens for r in measured) / len(measured):.0f} tokens/row, {steps} measured steps")
    speeds = {}
    for name in dict.fromkeys([attn, "sdpa_varlen"]):
        times = train_steps(shape, name, dtype, device, rows, warmup)
        tokens_per_s = sum(r.num_tokens for r in measured) / sum(times)
        mfu = tokens_per_s * per_token / (peak * 1e12) if peak else None
        speeds[name] = tokens_per_s
        print(f"train step ({name}, {dtype}): {statistics.median(times) * 1000:.0f} ms median, {tokens_per_s:,.0f} tokens/s"
              + (f", MFU {mfu:.1%} of {peak:g} TFLOPS" if mfu is not None else ""))
        result[f"tokens_per_s/{name}"] = tokens_per_s
        result[f"mfu/{name}"] = mfu
    if len(speeds) > 1:
        print(f"{attn} vs sdpa_varlen: {speeds[attn] / speeds['sdpa_varlen']:.2f}x tokens/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
