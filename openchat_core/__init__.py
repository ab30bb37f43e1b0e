"""openchat_core: the domain logic of the OpenChat pipeline.

Stages (data, training, evaluation, serving) live in sub-packages. Nothing here imports Prefect,
and heavy libraries (torch, transformers, deepspeed, vllm) are imported only by the modules
that need them, so the schema and data tooling stay importable everywhere.
"""

__version__ = "0.1.0"
