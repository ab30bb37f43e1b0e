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
