"""Greedy generation with vLLM's offline engine, run in the serving environment through a subprocess worker.

vLLM cannot be imported in the pipeline environment (see DESIGN.md, Environments), so each
`generate` call writes the token-id prompts to a file, runs `openchat_core.evaluation.vllm_worker`
with the serving env's python, and reads the generated ids back. The worker is given this
checkout on PYTHONPATH, so both sides run the same code even when the serving env has another
copy of the package installed. Every call starts a fresh engine (about 20-30 s on CPU): call it
once with all prompts. A LoRA adapter checkpoint runs as its base with the adapter applied to every
request (vLLM's LoRA support), so nothing is merged or written.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openchat_core.evaluation.generation import (
    Generation,
    check_generate_args,
    cut_at_stop,
    decode_generation,
    stop_token_ids_for,
)
from openchat_core.models.adapters import AdapterInfo, adapter_info, per_request_lora_problem
from openchat_core.models.checkpoint import checkpoint_model_type, context_limit, is_adapter_checkpoint
from openchat_core.serve_env import SERVE_PYTHON_ENV, checkout_env, find_serve_python, repo_root

LOG_TAIL_LINES = 40


class VLLMWorkerError(RuntimeError):
    """The vLLM worker process failed; the message has its exit code, log tail and command."""


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class VLLMGenerator:
    """`Generator` backed by vLLM (greedy, EOT stop, ignore_eos, float32 by default)."""

    name = "vllm"

    def __init__(self, model_dir: Path | str, *, stop_token_ids: Sequence[int] | None = None,
                 model_type: str | None = None, python: Path | str | None = None, dtype: str = "float32",
                 max_model_len: int | None = None, enforce_eager: bool = True, timeout_s: float | None = None,
                 log_dir: Path | str | None = None, env: dict[str, str] | None = None) -> None:
        from openchat_core.templates.tokenizers import load_tokenizer

        self.model_dir = Path(model_dir)
        self.adapter: AdapterInfo | None = adapter_info(self.model_dir) if is_adapter_checkpoint(self.model_dir) else None
        if self.adapter is not None and (problem := per_request_lora_problem(self.adapter)) is not None:
            raise ValueError(f"engine 'vllm': {problem}")
        resolved = Path(python) if python else find_serve_python()
        if resolved is None:
            raise FileNotFoundError(
                f"no serving environment found for vLLM: set ${SERVE_PYTHON_ENV} to its python, or create "
                f"{repo_root() / '.venv-serve'} (make setup); or use the transformers engine")
        self.python = resolved
        self.model_type = checkpoint_model_type(self.model_dir, model_type).name
        self.tokenizer = load_tokenizer(self.model_dir)  # decodes text here, identically for both engines
        self.stop_token_ids = [int(t) for t in (stop_token_ids or stop_token_ids_for(self.tokenizer, self.model_type))]
        if not self.stop_token_ids:
            raise ValueError("stop_token_ids must not be empty")
        self.max_model_len = max_model_len or context_limit(self.model_dir, self.model_type)
        self.dtype = dtype
        self.enforce_eager = enforce_eager
        self.timeout_s = timeout_s
        self.log_dir = Path(log_dir) if log_dir else None
        self.env = dict(env or {})
        self.last_run: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "python": str(self.python), "dtype": self.dtype, "max_model_len": self.max_model_len,
                "enforce_eager": self.enforce_eager, "stop_token_ids": self.stop_token_ids, "ignore_eos": True,
                "model_path": str(self.model_dir), "lora_base": str(self.adapter.base) if self.adapter else None, **{k: v for k, v in self.last_run.items() if k in ("vllm", "worker")}}

    def _command(self, requests: Path, out: Path, max_new_tokens: int) -> list[str]:
        model = self.adapter.base if self.adapter else self.model_dir.resolve()
        cmd = [str(self.python), "-m", "openchat_core.evaluation.vllm_worker", "--model", str(model),
               "--requests", str(requests), "--out", str(out), "--max-tokens", str(max_new_tokens),
               "--stop-token-ids", ",".join(map(str, self.stop_token_ids)), "--max-model-len", str(self.max_model_len),
               "--dtype", self.dtype]
        if not self.enforce_eager:
            cmd.append("--no-enforce-eager")
        if self.adapter is not None:
            cmd += ["--lora", str(self.adapter.path), "--lora-rank", str(self.adapter.rank)]
        return cmd

    def _environment(self) -> dict[str, str]:
        env = checkout_env()
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.update(self.env)
        return env

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[Generation]:
        check_generate_args(prompts, max_new_tokens)
        too_long = [i for i, p in enumerate(prompts) if len(p) + max_new_tokens > self.max_model_len]
        if too_long:
            raise ValueError(f"{len(too_long)} prompt(s) (first: #{too_long[0]}, {len(prompts[too_long[0]])} tokens) plus "
                             f"max_new_tokens={max_new_tokens} exceed max_model_len={self.max_model_len}; truncate prompts")
        with tempfile.TemporaryDirectory(prefix="openchat-vllm-") as tmp:
            work = Path(tmp)
            requests, out = work / "requests.jsonl", work / "out.jsonl"
            with requests.open("w", encoding="utf-8") as f:
                for i, prompt in enumerate(prompts):
                    f.write(json.dumps({"id": i, "prompt_token_ids": [int(t) for t in prompt]}) + "\n")
            log = (self.log_dir or work) / "vllm_worker.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = self._command(requests, out, max_new_tokens)
            started = time.perf_counter()
            with log.open("w", encoding="utf-8") as log_file:
                try:
                    proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=self._environment(),
                                          cwd=work, timeout=self.timeout_s, check=False)
                except subprocess.TimeoutExpired as exc:
                    raise VLLMWorkerError(f"vLLM worker timed out after {self.timeout_s} s; log tail:\n{_tail(log)}") from exc
            if proc.returncode != 0 or not out.is_file():
                raise VLLMWorkerError(
                    f"vLLM worker failed (exit code {proc.returncode}). Log tail:\n{_tail(log)}\n"
                    f"Command: {' '.join(cmd)}\nIf the model's shape is unsupported by this vLLM build (e.g. attention "
                    f"head size on CPU), use engine='transformers'.")
            meta_path = out.with_name(out.name + ".meta.json")
            self.last_run = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            self.last_run["wall_s"] = round(time.perf_counter() - started, 3)
            by_id = {}
            for line in out.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                by_id[row["id"]] = row
        if sorted(by_id) != list(range(len(prompts))):
            raise VLLMWorkerError(f"vLLM worker returned {len(by_id)} results for {len(prompts)} prompts")
        results = []
        for i in range(len(prompts)):
            ids, reason = cut_at_stop(by_id[i]["token_ids"], self.stop_token_ids)
            if by_id[i]["finish_reason"] not in ("stop", "length"):
                raise VLLMWorkerError(f"prompt {i}: unexpected finish_reason {by_id[i]['finish_reason']!r} from vLLM")
            results.append(Generation(decode_generation(self.tokenizer, ids, reason), ids, reason))
        return results

