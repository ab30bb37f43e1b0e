"""Padding-free packing on a stock transformers model, loss normalisation across ranks, schedule, dataset policies."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from openchat_core.training.data import PackedBatch, TokenDataset
from openchat_core.training.loss import packed_forward, weighted_sums
from openchat_core.training.schedule import auto_learning_rate, cosine_with_warmup

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model(mistral_tokenizer):
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS

    model = build_random_model(MODEL_PRESETS["tiny-mistral"], mistral_tokenizer, seed=0, attn_implementation="sdpa")
    return model.double()  # float64 so equality checks are about semantics, not rounding


def _seq(rng, n):
    ids = rng.integers(3, 32000, n)
    weights = (rng.random(n) < 0.6) * rng.choice([1.0, 0.1], n)
    labels = np.where(weights != 0, rng.integers(3, 32000, n), 0)
    return ids, labels, weights


def _batch(seqs) -> PackedBatch:
    ids = np.concatenate([s[0] for s in seqs])
    pos = np.concatenate([np.arange(len(s[0])) for s in seqs])
    labels = np.concatenate([s[1] for s in seqs])
    weights = np.concatenate([s[2] for s in seqs])
    return PackedBatch(torch.tensor(ids).unsqueeze(0), torch.tensor(pos).unsqueeze(0), torch.tensor(labels),
                       torch.tensor(weights, dtype=torch.float64), [len(s[0]) for s in seqs])


def test_packed_logits_equal_per_sequence_logits(tiny_model):
    rng = np.random.default_rng(0)
    seqs = [_seq(rng, n) for n in (7, 13, 5)]
    with torch.no_grad():
        packed = packed_forward(tiny_model, _batch(seqs)).logits[0]
        separate = torch.cat([packed_forward(tiny_model, _batch([s])).logits[0] for s in seqs])
        wrong = tiny_model(input_ids=_batch(seqs).input_ids, position_ids=_batch(seqs).position_ids).logits[0]  # use_cache left on
    assert torch.allclose(packed, separate, atol=1e-9)
    assert not torch.allclose(wrong, separate, atol=1e-3)  # the silent pitfall the packed path avoids


def test_packed_gradients_equal_per_sequence_gradients(tiny_model):
    rng = np.random.default_rng(1)
    seqs = [_seq(rng, n) for n in (9, 4, 16)]
    tiny_model.zero_grad()
    weighted_sums(tiny_model, _batch(seqs))[0].backward()
    packed = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    for s in seqs:
        weighted_sums(tiny_model, _batch([s]))[0].backward()
    for a, (name, p) in zip(packed, tiny_model.named_parameters()):
        assert torch.allclose(a, p.grad, atol=1e-9), name


def test_batch_without_supervision_still_has_a_graph(tiny_model):
    rng = np.random.default_rng(2)
    ids, labels, _ = _seq(rng, 6)
    loss, acc, wsum = weighted_sums(tiny_model, _batch([(ids, labels, np.zeros(6))]))
    loss.backward()
    assert loss.item() == 0.0 and wsum.item() == 0.0


def _rank_worker(rank, world, port, out_path, seqs, global_num_seqs):
    import torch.distributed as dist

    from openchat_core.templates.tokenizers import load_tokenizer
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = build_random_model(MODEL_PRESETS["tiny-mistral"], load_tokenizer("preset:mistral"), seed=0, attn_implementation="sdpa").double()
    local = seqs[rank::world]
    loss = weighted_sums(model, _batch(local))[0] * (world / global_num_seqs)  # what the trainer feeds DeepSpeed
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    dist.all_reduce(grads)
    grads /= world  # DeepSpeed averages gradients over data-parallel ranks
    if rank == 0:
        torch.save(grads, out_path)
    dist.destroy_process_group()


def test_two_ranks_of_a_split_batch_give_the_single_rank_gradient(tmp_path, tiny_model):
    from openchat_core.training.launcher import free_port

    rng = np.random.default_rng(3)
    seqs = [_seq(rng, n) for n in (11, 6, 8, 14)]
    global_num_seqs = float(sum(s[2][1:].sum() + 0 for s in seqs))  # any positive normaliser shared by all ranks
    torch.multiprocessing.spawn(_rank_worker, args=(2, free_port(), str(tmp_path / "g.pt"), seqs, global_num_seqs), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "g.pt")
    tiny_model.zero_grad()
    (weighted_sums(tiny_model, _batch(seqs))[0] / global_num_seqs).backward()
    single = torch.cat([p.grad.flatten() for p in tiny_model.parameters()])
    assert torch.allclose(distributed, single, atol=1e-10)


def test_cosine_schedule_shape():
    f = lambda s: cosine_with_warmup(s, warmup_steps=10, total_steps=110, min_ratio=0.1)  # noqa: E731
    assert f(0) == 0 and f(5) == 0.5 and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5) and f(110) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_auto_learning_rate_is_openchats_rule():
    # OpenChat: 3e-4 / 6 for Mistral, times sqrt(batch_max_len * world * supervised_ratio / 4M)
    assert auto_learning_rate("openchat_v3.2_mistral", 77824, 8, 0.5) == pytest.approx(3e-4 / 6 * math.sqrt(77824 * 8 * 0.5 / 4e6))
    assert auto_learning_rate("openchat_3.6", 40960, 8, 0.4) == pytest.approx(3e-4 / 5.3 * math.sqrt(40960 * 8 * 0.4 / 4e6))


@pytest.fixture()
def tokens_file(tmp_path, mistral_tokenizer):
    from openchat_core.data.pretokenize import pretokenize_file
    from openchat_core.templates.conversation import TemplateSpec

    convs = [{"items": [{"role": "user", "content": "word " * 3, "weight": 0}, {"role": "assistant", "content": "ok " * n, "weight": 1}]}
             for n in (3, 40, 200)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(c) + "\n" for c in convs))
    pretokenize_file(src, tmp_path / "t.parquet", TemplateSpec.from_tokenizer("openchat_3.5", mistral_tokenizer), tokenizer_fingerprint="x")
    return tmp_path / "t.parquet"


def test_dataset_batches_are_the_rows(tokens_file):
    import pyarrow.parquet as pq

    ds = TokenDataset(tokens_file)
    rows = pq.read_table(tokens_file).to_pylist()
    batch = ds.batch(np.array([2, 0]))
    assert batch.input_ids[0].tolist() == rows[2]["nz_input_ids"] + rows[0]["nz_input_ids"]
    assert batch.position_ids[0].tolist() == rows[2]["nz_position_ids"] + rows[0]["nz_position_ids"]
    assert batch.seqlens == [rows[2]["total_length"], rows[0]["total_length"]]
    assert batch.weights.tolist() == pytest.approx(rows[2]["nz_shifted_loss_weights"] + rows[0]["nz_shifted_loss_weights"])


def test_overlong_policy(tokens_file):
    with pytest.raises(ValueError, match=r"1 sequence\(s\) are longer than batch_max_len=128 .*overlong=truncate"):
        TokenDataset(tokens_file, max_len=128)
    ds = TokenDataset(tokens_file, max_len=128, overlong="truncate")
    assert ds.truncated.tolist() == [2] and ds.lengths[2] == 128 and ds.batch(np.array([2])).num_tokens == 128
    assert 0 < ds.num_seqs[2] < TokenDataset(tokens_file).num_seqs[2]


def test_root_cause_and_retryability_of_training_failures():
    from openchat_core.training.launcher import TrainingFailed, root_cause

    tail = ["[INFO] spawned", "[rank0]: Traceback (most recent call last):", "[rank0]:   File x",
            "[rank0]: openchat_core.templates.conversation.MissingSpecialTokenError: tokenizer has no <|end_of_turn|>", "[ERROR] exits 1"]
    assert root_cause(tail) == "openchat_core.templates.conversation.MissingSpecialTokenError: tokenizer has no <|end_of_turn|>"
    assert root_cause(["Killed"]).startswith("no exception in the output")
    assert not TrainingFailed("x", "MissingSpecialTokenError").retryable
    assert TrainingFailed("x", "RuntimeError").retryable and TrainingFailed("x", None).retryable


def test_sdpa_varlen_equals_per_sequence_sdpa_in_logits_and_gradients(mistral_tokenizer, tiny_model):
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS
    from openchat_core.models.varlen_attention import register

    register()
    varlen = build_random_model(MODEL_PRESETS["tiny-mistral"], mistral_tokenizer, seed=0, attn_implementation="sdpa_varlen").double()
    rng = np.random.default_rng(5)
    seqs = [_seq(rng, n) for n in (12, 3, 30, 1)]
    with torch.no_grad():
        separate = torch.cat([packed_forward(tiny_model, _batch([s])).logits[0] for s in seqs])
        assert torch.allclose(packed_forward(varlen, _batch(seqs)).logits[0], separate, atol=1e-9)
    varlen.zero_grad()
    weighted_sums(varlen, _batch(seqs))[0].backward()
    tiny_model.zero_grad()
    for s in seqs:
        weighted_sums(tiny_model, _batch([s]))[0].backward()
    for (name, a), b in zip(varlen.named_parameters(), tiny_model.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-9), name


def test_sdpa_varlen_refuses_padded_batches(mistral_tokenizer):
    from openchat_core.models.model_factory import build_random_model
    from openchat_core.models.presets import MODEL_PRESETS
    from openchat_core.models.varlen_attention import register

    register()
    model = build_random_model(MODEL_PRESETS["tiny-mistral"], mistral_tokenizer, seed=0, attn_implementation="sdpa_varlen")
    with pytest.raises(NotImplementedError, match="use attn_implementation='sdpa'"):
        model(input_ids=torch.ones(2, 4, dtype=torch.long), use_cache=False)


def test_add_special_tokens_initialises_new_embeddings_to_the_mean(tmp_path):
    from typer.testing import CliRunner

    from openchat_core.cli import build_app
    from openchat_core.templates.tokenizers import load_tokenizer
    from openchat_core.models.model_factory import add_special_tokens, build_random_model
    from openchat_core.models.presets import MODEL_PRESETS

    tok = load_tokenizer("preset:llama3")  # has no <|end_of_turn|>
    model = build_random_model(MODEL_PRESETS["tiny-llama3"], tok, seed=0, attn_implementation="sdpa")
    before = model.get_input_embeddings().weight.detach().clone()
    assert add_special_tokens(model, tok, ["<|end_of_turn|>", "<|eot_id|>"]) == ["<|end_of_turn|>"]
    new_id = tok.convert_tokens_to_ids("<|end_of_turn|>")
    weights = model.get_input_embeddings().weight
    assert new_id == 128256 and weights.shape[0] == len(tok)
    assert torch.allclose(weights[new_id], before.mean(dim=0)) and torch.equal(weights[:new_id], before)

    model.save_pretrained(str(tmp_path / "base"))
    tok = load_tokenizer("preset:llama3")
    tok.save_pretrained(str(tmp_path / "base"))  # a "base model" without the token
    result = CliRunner().invoke(build_app(), ["add-special-tokens", "--model-path", str(tmp_path / "base"), "--out", str(tmp_path / "new"),
                                              "--model-type", "openchat_3.5"])
    assert result.exit_code == 0, result.output
    assert "<|end_of_turn|>" in load_tokenizer(tmp_path / "new").get_vocab()


def test_packed_attention_choice_without_flash_attn_uses_torch_varlen_on_cuda():
    from openchat_core.models.model_factory import choose_packed_attention, default_attn_implementation
    from openchat_core.models.varlen_attention import torch_varlen_available

    assert choose_packed_attention(cuda=True, flash_attn=True, torch_varlen=True)[0] == "flash_attention_2"
    assert choose_packed_attention(cuda=True, flash_attn=False, torch_varlen=True)[0] == "torch_varlen"
    assert choose_packed_attention(cuda=True, flash_attn=False, torch_varlen=False)[0] == "sdpa_varlen"
    assert choose_packed_attention(cuda=False, flash_attn=False, torch_varlen=True)[0] == "sdpa_varlen"
    if not torch.cuda.is_available():  # this machine: the CPU fallback
        assert not torch_varlen_available() and default_attn_implementation() == "sdpa_varlen"
    assert default_attn_implementation(training=False) == "sdpa"


def test_cu_seqlens_split_a_packed_row_at_position_restarts():
    from openchat_core.models.varlen_attention import cu_seqlens

    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    bounds, longest = cu_seqlens(positions, 9)
    assert bounds.tolist() == [0, 3, 5, 9] and bounds.dtype == torch.int32 and longest == 4
    assert cu_seqlens(torch.tensor([[3, 4, 0, 1]]), 4)[0].tolist() == [0, 2, 4]  # a row that starts mid-sequence


def test_torch_varlen_call_matches_each_torch_signature():
    """torch 2.11 (the GPU image) has `window_size` but no `enable_gqa`; newer torch has both; 2.10 took `is_causal`.
    Grouped K/V heads are repeated as HF's repeat_kv does (query head h reads K/V head h // groups) where the kernel can't."""
    from openchat_core.models.varlen_attention import _varlen_call_options

    def torch_2_10(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, is_causal=False): ...
    def torch_2_11(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)): ...
    def torch_2_13(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False): ...

    q, k, v = torch.randn(5, 4, 8), torch.randn(5, 2, 8), torch.randn(5, 2, 8)  # (T, H, D), 2 query heads per K/V head
    k2, v2, options = _varlen_call_options(torch_2_11, q, k, v)
    assert options == {"window_size": (-1, 0)} and k2.shape == q.shape
    assert torch.equal(k2[:, 3], k[:, 1]) and torch.equal(v2[:, 2], v[:, 1]) and torch.equal(k2[:, 0], k[:, 0])
    k3, _, options = _varlen_call_options(torch_2_13, q, k, v)
    assert options == {"window_size": (-1, 0), "enable_gqa": True} and k3 is k
    assert _varlen_call_options(torch_2_10, q, q, q)[2] == {"is_causal": True}
    assert _varlen_call_options(torch_2_13, q, q, q)[2] == {"window_size": (-1, 0)}
