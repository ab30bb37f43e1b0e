"""Pipeline config: every shipped config validates; mistakes are rejected with messages that say how to fix them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from openchat_core.config import ConfigError, build_config, load_config, parse_overrides

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
MINIMAL = {"name": "x", "data": {"train": ["a.jsonl"]}, "weights": {"condition_weights": {"GPT4": 1.0}}}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.name and cfg.weights.condition_weights


def test_shipped_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"demo", "smollm2-135m", "openchat-3.5-mistral-7b", "openchat-3.6-llama3-8b"}


def test_gpu_presets_follow_openchat_recipes():
    mistral = load_config(CONFIGS[0].parent / "openchat-3.5-mistral-7b.yaml")
    llama3 = load_config(CONFIGS[0].parent / "openchat-3.6-llama3-8b.yaml")
    assert (mistral.train.batch_max_len, llama3.train.batch_max_len) == (77824, 40960)  # OpenChat's per-GPU batch sizes
    for cfg in (mistral, llama3):
        assert cfg.train.zero_stage == 2 and cfg.model.dtype == "bfloat16" and cfg.model.attn_implementation == "auto"  # flash-attn is optional
        assert cfg.train.lr is None  # OpenChat's automatic learning rate


PREFECT_YAML = Path(__file__).parents[2] / "prefect.yaml"


def _deployments():
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["name"])
def test_prefect_deployments_bind_to_their_flows(deployment):
    import importlib
    import inspect

    module_path, func = deployment["entrypoint"].split(":")
    module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, func)
    inspect.signature(flow.fn).bind(**deployment.get("parameters", {}))  # every parameter exists on the flow
    load_config(Path(__file__).parents[2] / deployment["parameters"]["config_path"])
    assert deployment["work_pool"]["name"] == "local-process"


def test_deployment_set_covers_schedule_ui_and_every_stage():
    by_name = {d["name"]: d for d in _deployments()}
    assert by_name["nightly"]["schedules"][0]["cron"] and by_name["nightly"]["parameters"]["skip_if_unchanged"] is True
    assert {"on-demand", "data", "train", "evaluate-and-promote", "deploy"} <= set(by_name)


def test_overrides_are_typed_and_nested():
    cfg = build_config(MINIMAL, ["train.epochs=5", "data.train=[b.jsonl, c.jsonl]", "weights.condition_weights={'GPT3': 0.1}"])
    assert cfg.train.epochs == 5 and cfg.data.train == ["b.jsonl", "c.jsonl"] and cfg.weights.condition_weights == {"GPT3": 0.1}


@pytest.mark.parametrize(("override", "message"), [
    ("train.epoch=5", r"train.epoch: unknown key"),
    ("train.batch_max_len=1000", r"multiple of 64.*try 1024"),
    ("tokenize.model_type=gpt5", r"unknown model type 'gpt5'; choose one of"),
    ("tokenize.condition_format=Mode", r"tokenize.condition_format.*must contain \{condition\} exactly once"),
    ("tokenize.condition_placement=assistant", r"tokenize.condition_placement"),
    ("weights.condition_weights={}", r"condition_weights is empty"),
    ("data.train=[]", r"data.train is empty"),
    ("train.zero_stage=4", r"train.zero_stage"),
    ("name=has space", r"name: String should match pattern"),
])
def test_mistakes_are_reported_with_fixes(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(MINIMAL, [override])


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError, match=r"2 problem\(s\)"):
        build_config(MINIMAL, ["train.epochs=0", "train.lr=-1"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["epochs"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)


def test_data_globs_must_match(tmp_path):
    (tmp_path / "a.jsonl").write_text("")
    cfg = build_config(MINIMAL, base_dir=tmp_path)
    assert cfg.data.resolve(["*.jsonl"], tmp_path) == [tmp_path / "a.jsonl"]
    with pytest.raises(ConfigError, match="matches no file"):
        cfg.data.resolve(["missing/*.jsonl"], tmp_path)


def test_data_sources_mix_plain_paths_and_mappings():
    cfg = build_config(MINIMAL, ["data.train=[a.jsonl, {path: b.parquet, format: alpaca, condition: GPT3, max_conversations: 5}]"])
    plain, alpaca = cfg.data.as_sources(cfg.data.train)
    assert (plain.path, plain.format, plain.condition, plain.max_conversations) == ("a.jsonl", "auto", None, None)
    assert (alpaca.format, alpaca.condition, alpaca.max_conversations) == ("alpaca", "GPT3", 5)
    assert cfg.data.mix.dedup and cfg.data.mix.seed == 0


@pytest.mark.parametrize(("override", "message"), [
    ("data.train=[{path: a.jsonl, format: csv}]", r"data.train.0.source.format: Input should be 'auto', 'openchat'"),
    ("data.train=[{path: a.jsonl, sample_fraction: 0}]", r"1 problem.*sample_fraction: Input should be greater than 0"),
    ("data.train=[{path: a.jsonl, conditon: X}]", r"conditon: unknown key"),
    ("data.mix={min_chars: 10, max_chars: 5}", r"max_chars=5 is below min_chars=10"),
])
def test_data_source_mistakes_name_the_field(override, message):
    with pytest.raises(ConfigError, match=re.compile(message, re.S)):
        build_config(MINIMAL, [override])


def test_readme_source_config_example_validates():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = yaml.safe_load(re.search(r"\*\*Sources\.\*\*.*?```yaml\n(.*?)```", readme, re.S).group(1))
    cfg = build_config({**MINIMAL, **example})
    assert [s.format for s in cfg.data.as_sources(cfg.data.train)] == ["sharegpt", "alpaca", "auto"] and cfg.data.mix.max_turns == 64
