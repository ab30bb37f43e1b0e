"""Server settings and the CLI generated from them."""

from __future__ import annotations

import pytest

from openchat_core.serving.settings import ServeSettings, make_arg_parser, settings_from_args


def test_cli_flags_map_to_settings():
    settings = settings_from_args(["--model", "/m", "--engine", "transformers", "--port", "9000", "--api-keys", "a", "b",
                                   "--admin-key", "adm", "--log-file", "/tmp/r.log", "--log-prompts",
                                   "--no-enable-system-prompt", "--max-model-len", "2048"], environ={})
    assert settings.engine == "transformers" and settings.port == 9000
    assert settings.api_key_values() == ["a", "b"] and settings.admin_key_value() == "adm"
    assert settings.log_prompts is True and settings.enable_system_prompt is False
    assert settings.max_model_len == 2048 and str(settings.log_file) == "/tmp/r.log"
    assert settings.host == "127.0.0.1"  # safe default


def test_every_settings_field_has_a_documented_flag():
    help_text = make_arg_parser().format_help()
    for name, field in ServeSettings.model_fields.items():
        assert "--" + name.replace("_", "-") in help_text
        assert field.description


def test_keys_can_come_from_the_environment_and_are_hidden_in_repr():
    env = {"OPENCHAT_API_KEYS": "sk-one, sk-two,", "OPENCHAT_ADMIN_KEY": "adm-zzz"}
    settings = settings_from_args(["--model", "/m"], environ=env)
    assert settings.api_key_values() == ["sk-one", "sk-two"] and settings.admin_key_value() == "adm-zzz"
    assert "sk-one" not in repr(settings) and "adm-zzz" not in repr(settings)
    cli_wins = settings_from_args(["--model", "/m", "--api-keys", "cli"], environ={"OPENCHAT_API_KEYS": "env"})
    assert cli_wins.api_key_values() == ["cli"]


def test_admin_key_must_differ_from_api_keys(capsys):
    with pytest.raises(SystemExit):
        settings_from_args(["--model", "/m", "--api-keys", "same", "--admin-key", "same"], environ={})
    assert "admin_key must differ" in capsys.readouterr().err


def test_dtype_defaults_per_engine():
    assert ServeSettings(model="/m").resolved_dtype() == "bfloat16"
    assert ServeSettings(model="/m", engine="transformers").resolved_dtype() == "float32"
    assert ServeSettings(model="/m", dtype="float32").resolved_dtype() == "float32"


def test_unknown_engine_is_rejected(capsys):
    with pytest.raises(SystemExit):
        settings_from_args(["--model", "/m", "--engine", "tensorrt"], environ={})
    assert "invalid choice" in capsys.readouterr().err
