"""`eval:` settings: generation evals, the lm-eval gate, the coding sandbox and how the best epoch is picked."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from openchat_core.evaluation.coding.sandbox import SandboxLimits
from openchat_core.evaluation.coding.scoring import CodingOptions
from openchat_core.section import Section


class EvalConfig(Section):
    condition: str = Field("", description="generation condition; empty = the model type's inference condition")
    eval_data: str | None = Field(None, description="root of eval sets (<root>/<task_type>/<task>.jsonl)")
    eval_sets: list[str] = Field(default_factory=list, description="task-name prefixes; empty = all under eval_data")
    engine: Literal["auto", "vllm", "transformers"] = "auto"
    max_new_tokens: int = Field(512, ge=1, description="answer length cap per question (OpenChat's eval uses 512)")
    limit_per_task: int | None = Field(None, ge=1, description="evaluate only the first N questions of each task (quick runs)")
    harness: list[str] = Field(default_factory=list, description="lm-eval tasks run against each candidate served on a "
                               "temporary loopback port (names from harness_include or installed tasks that need no "
                               "download); scores are harness/<task>/<metric>; empty = off")
    harness_include: str | None = Field(None, description="folder of local lm-eval task YAML files for eval.harness")
    harness_model: Literal["local-completions", "local-chat-completions"] = Field(
        "local-completions", description="lm-eval model: completions (log-likelihood and generation tasks) or chat "
                                         "completions (generation tasks only, through the OpenChat template)")
    harness_limit: int | None = Field(None, ge=1, description="lm-eval --limit: the first N documents of each task")
    primary_metric: str = Field("eval/loss", description="metric that picks the best epoch, e.g. eval/loss, gen/accuracy "
                                                         "gen/coding/humaneval/pass1_plus or harness/<task>/acc")
    direction: Literal["minimize", "maximize"] = "minimize"
    tie_break: Literal["later_epoch", "lower_loss"] = "later_epoch"
    humaneval_plus: str | None = Field(None, description="coding eval: local HumanEvalPlus .jsonl(.gz) replacing the problems "
                                                         "in the coding rows (never downloaded)")
    code_timeout_s: float = Field(SandboxLimits.timeout_s, gt=0, description="coding eval: wall-clock limit per problem")
    code_memory_mb: int = Field(SandboxLimits.memory_mb, ge=256, description="coding eval: address-space limit per problem")
    code_workers: int = Field(CodingOptions.workers, ge=1, description="coding eval: problems run in parallel sandboxes")
