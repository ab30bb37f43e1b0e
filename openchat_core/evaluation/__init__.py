"""Generation evaluation: OpenChat's eval sets, answer matchers, engines, runner, result tables.

Modules (each one job; none imports Prefect, MLflow, torch or vLLM at import time):
- `matchers`, `math_answer`, `grading/`: pure `(row, response) -> MatchResult` scorers;
- `task_types`: task type -> matcher and row checks (OpenChat's MATCH_ANSWER_FUNCTION);
- `eval_data`: `<root>/<task_type>/<task>.jsonl` loading, prefix selection, issues, digest;
- `generation`: the `Generator` interface and shared rules; `transformers_generator` (transformers),
  `vllm_generator` + `vllm_worker` (vLLM in the serving environment); `generators`: picks one;
- `runner`: `run_generation_eval` -> results.jsonl + summary.json; `summary`: aggregation;
- `view`: tables across result folders.

Nothing is re-exported here on purpose: `python -m openchat_core.evaluation.vllm_worker` runs in
the serving environment and must not import the pipeline's dependencies through this package.
"""
