"""Loading base models: a model the trainer could not save is refused when it loads, not after training."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from openchat_core.models.model_factory import load_base_model

    model, tokenizer = load_base_model("preset:tiny-mistral")
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_a_plain_folder_loads_and_counts_as_plain(tiny_folder):
    from openchat_core.models.model_factory import is_plain_model_dir, load_base_model

    model, _ = load_base_model(tiny_folder)
    assert getattr(model, "hf_quantizer", None) is None
    assert is_plain_model_dir(tiny_folder)


def test_a_folder_left_quantized_by_a_gguf_load_is_refused_at_load_time(tiny_folder, tmp_path):
    """What the v1 SmolLM2 cache held: dequantised weights, but `quantization_config: gguf` still in config.json."""
    import shutil

    from openchat_core.models.model_factory import is_plain_model_dir, load_base_model

    stale = tmp_path / "stale"
    shutil.copytree(tiny_folder, stale)
    config = json.loads((stale / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gguf", "gguf_file": "model.gguf", "dequantize": False}
    (stale / "config.json").write_text(json.dumps(config))

    assert not is_plain_model_dir(stale)
    with pytest.raises(ValueError, match="quantized with gguf") as info:
        load_base_model(stale)
    assert str(stale) in str(info.value) and "quantization_config" in str(info.value)
