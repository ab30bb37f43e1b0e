"""Shared fixtures. Heavy ones (tokenizers, Prefect harness) are session-scoped and built lazily."""

from __future__ import annotations

import os

import pytest

from openchat_core.telemetry import telemetry_defaults

os.environ.update(telemetry_defaults())  # the test session and every process it starts (before MLflow/Prefect are imported)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    has_gpu = None
    for item in items:
        if "gpu" in item.keywords:
            if has_gpu is None:
                has_gpu = _cuda_available()
            if not has_gpu:
                item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def mistral_tokenizer():
    from openchat_core.templates.tokenizers import load_tokenizer

    return load_tokenizer("preset:mistral")


@pytest.fixture(scope="session")
def llama3_tokenizer():
    from openchat_core.templates.tokenizers import load_tokenizer

    return load_tokenizer("preset:llama3")
