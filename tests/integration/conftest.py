"""Integration fixtures: one Prefect test harness (throwaway SQLite server) per session, demo data."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    from openchat_core.data.demo import DemoSizes, generate_demo_data

    out = tmp_path_factory.mktemp("demo-data")
    generate_demo_data(out, seed=0, sizes=DemoSizes(train=600, eval_per_task=10))
    return out


def write_config(folder, demo_data_dir, name: str, **sections) -> str:
    """A pipeline config for the demo data with fast test settings; `sections` override (merged one level deep)."""
    import yaml

    cfg = {
        "name": name,
        "storage": {"root": str(folder / "store")},
        "data": {"train": [str(demo_data_dir / "train.jsonl")], "eval": [str(demo_data_dir / "eval.jsonl")]},
        "weights": {"condition_weights": {"GPT4 Correct": 1.0, "GPT3": 0.1}},
        "tokenize": {"model_type": "openchat_3.5", "tokenizer": "preset:mistral"},
        "model": {"base": "preset:tiny-mistral"},
        "train": {"epochs": 2, "batch_max_len": 1024, "lr": 3e-3, "zero_stage": 0},
        "eval": {"eval_data": str(demo_data_dir / "eval_data"), "eval_sets": ["demo"], "engine": "transformers", "max_new_tokens": 8,
                 "limit_per_task": 3},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg[section], **values} if isinstance(values, dict) and isinstance(cfg.get(section), dict) else values
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)
