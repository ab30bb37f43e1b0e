"""Coding eval (HumanEval / HumanEval+ as OpenChat reports it, scored with evalplus).

- `extract`: the program in a chat answer (OpenChat's rules; pure);
- `problems`: HumanEval+ problems from the eval rows or a local HumanEvalPlus file; sandbox jobs;
- `sandbox` (parent) + `sandbox_worker` (child, standalone): run one solution under limits;
- `scoring`: many solutions -> verdicts, pass@1, EvalPlus `samples.jsonl` export.

The runner calls `scoring` for task types with `executes_code`; nothing here imports torch.
"""
