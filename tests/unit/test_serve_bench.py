"""bench/serve_bench.py runs every engine alike: the same dtype and engine settings, the same rounds.

Run: python -m pytest tests/unit/test_serve_bench.py -q
"""

from __future__ import annotations

import pytest

from bench.serve_bench import OURS_TRANSFORMERS, OURS_VLLM, VLLM_SERVER, engine_args, round_orders, vllm_server_command
from openchat_core.serving.deploy import server_command
from openchat_core.serving.settings import settings_from_args


def ours_settings(engine: str, extra_args: tuple[str, ...]):
    """What our server parses from the command line deploy_model starts it with (after `python -m openchat_core.serving`)."""
    argv = server_command("python", "/models/tiny", "127.0.0.1", 8000, engine=engine, extra_args=extra_args)
    assert argv[1:3] == ["-m", "openchat_core.serving"]
    return settings_from_args(argv[3:], environ={})


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_every_server_runs_the_same_dtype_and_engine_settings(dtype):
    common = engine_args(dtype, 2048)
    ours = [ours_settings(engine, common) for engine in ("vllm", "transformers")]
    assert [s.resolved_dtype() for s in ours] == [dtype, dtype]
    assert {(s.max_model_len, s.max_num_seqs) for s in ours} == {(2048, 32)}
    vllm = vllm_server_command("python", "/models/tiny", 8001, common)
    flags = {flag: value for flag, value in zip(vllm, vllm[1:]) if flag.startswith("--")}
    assert (flags["--dtype"], flags["--max-model-len"], flags["--max-num-seqs"]) == (dtype, "2048", "32")


def test_without_the_shared_dtype_the_engines_would_differ():
    """Why the bench passes the dtype to every server: the engines' own defaults differ."""
    assert ours_settings("vllm", ()).resolved_dtype() == "bfloat16"
    assert ours_settings("transformers", ()).resolved_dtype() == "float32"


def test_every_server_gets_every_round_and_each_goes_first_in_turn():
    names = [OURS_VLLM, VLLM_SERVER, OURS_TRANSFORMERS]
    orders = round_orders(names, 5)
    assert len(orders) == 5 and all(sorted(order) == sorted(names) for order in orders)
    assert [order[0] for order in orders] == [*names, *names[:2]]
