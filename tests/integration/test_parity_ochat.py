"""Opt-in parity with OpenChat's own `generate_dataset` (package `ochat`, installed by `make reference`).

The reference runs its real code path (Ray workers, its ConversationTemplate, add_single_conv,
Table.from_pydict). One adaptation, documented: ochat 3.6.1 escapes special-token text in content
by toggling `tokenizer._tokenizer.encode_special_tokens`, which transformers 5 resets on every call,
so on transformers 5 the reference silently stops escaping (its own golden test then fails). We
run the reference through its own slow-tokenizer branch (`split_special_tokens=ignore_special`),
which is what that toggle means on transformers 5 (tests/ochat_compat.py). Rows are compared as multisets because OpenChat
shuffles lines before splitting them across workers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from openchat_core.data.pretokenize import pretokenize_file
from openchat_core.templates.conversation import TemplateSpec
from openchat_core.templates.tokenizers import load_tokenizer, resolve_tokenizer_dir, tokenizer_fingerprint
from tests.parity_corpus import parity_conversations

ochat = pytest.importorskip("ochat", reason="reference package not installed: run `make reference`")
ray = pytest.importorskip("ray", reason="reference package not installed: run `make reference`")
pytestmark = [pytest.mark.parity, pytest.mark.integration]


@pytest.fixture(scope="module")
def reference():
    from ochat.data import generate_dataset

    from tests.ochat_compat import init_ray_with_patch

    init_ray_with_patch(num_cpus=2, repo_root=str(Path(__file__).resolve().parents[2]))
    yield generate_dataset
    ray.shutdown()


def _rows(path):
    rows = pq.read_table(path).to_pylist()
    return sorted(rows, key=lambda r: (r["nz_input_ids"], r["nz_shifted_loss_weights"]))


@pytest.mark.parametrize("per_sequence_loss", [False, True])
@pytest.mark.parametrize(("model_type", "preset"), [("openchat_3.5", "mistral"), ("openchat_3.6", "llama3")])
def test_identical_rows_to_openchat_generate_dataset(tmp_path, reference, model_type, preset, per_sequence_loss):
    convs = parity_conversations(400, seed=1)
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs))
    canonical = {"openchat_3.5": "openchat_v3.2_mistral"}.get(model_type, model_type)
    reference.generate_epoch(seed=42, model_type=canonical, model_path=str(resolve_tokenizer_dir(f"preset:{preset}")),
                             in_filename=str(src), out_filename=str(tmp_path / "ref.parquet"), per_sequence_loss=per_sequence_loss)

    tok = load_tokenizer(f"preset:{preset}")
    report = pretokenize_file(src, tmp_path / "ours.parquet", TemplateSpec.from_tokenizer(model_type, tok),
                              tokenizer_fingerprint=tokenizer_fingerprint(tok), per_sequence_loss=per_sequence_loss, workers=2, batch_rows=64)
    ours, ref = _rows(tmp_path / "ours.parquet"), _rows(tmp_path / "ref.parquet")
    assert report.counts.truncated > 0 and report.counts.dropped_no_supervision > 0  # the corpus exercises both paths
    assert len(ours) == len(ref)
    assert ours == ref
    assert pq.read_schema(tmp_path / "ours.parquet").remove_metadata() == pq.read_schema(tmp_path / "ref.parquet").remove_metadata()
