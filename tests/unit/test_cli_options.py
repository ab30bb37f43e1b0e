"""The stage commands' options come from the config fields: same names, same defaults, validated by the config."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from openchat_core.cli import build_app
from openchat_core.config import EvalConfig, ModelConfig, TrainConfig
from openchat_core.training.trainer_config import TrainerConfig


def _params(name: str) -> dict:
    command = typer.main.get_command(build_app()).commands[name]
    return {p.name: p for p in command.params}


def test_train_options_are_the_config_fields_with_their_defaults():
    params = _params("train")  # `experiment` is the command's own option (its default names the standalone run)
    for model in (TrainConfig, TrainerConfig, ModelConfig):
        for name, field in model.model_fields.items():
            if name in params and name != "experiment" and not field.is_required() and field.default_factory is None:
                assert params[name].default == field.default, name
    assert set(TrainConfig.model_fields) <= set(params)
    assert "--num-gpus" in params["num_procs"].opts  # the README's alias


def test_eval_max_new_tokens_default_is_the_configs():
    assert _params("eval")["max_new_tokens"].default == EvalConfig().max_new_tokens == 512


def test_a_bad_generated_option_gets_the_configs_message(tmp_path):
    result = CliRunner().invoke(build_app(),
                                ["train", "--data", str(tmp_path / "t.parquet"), "--model-path", "preset:tiny-mistral",
                                 "--out", str(tmp_path), "--batch-max-len", "100", "--no-mlflow"])
    assert result.exit_code != 0
    assert "must be a multiple of 64" in result.output
