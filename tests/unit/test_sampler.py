"""Multipack sampler: property tests for every plan invariant, plus bad inputs and edge cases.

Run: python -m pytest tests/unit/test_sampler.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from openchat_core.training.sampler import EpochPlan, MultipackSampler, OverlongSequenceError, _complete_final_step

PROPERTY = settings(max_examples=150, deadline=None)


@st.composite
def packing_inputs(draw, max_size: int = 200):
    """Arbitrary (often adversarial) lengths: from all-tiny to all-full bins, 1 to 8 ranks."""
    capacity = draw(st.integers(1, 600))
    num_ranks = draw(st.integers(1, 8))
    size = draw(st.integers(num_ranks, max(num_ranks, max_size)))
    high = draw(st.integers(1, capacity))  # a band of lengths: all tiny, all near capacity / k, or anything
    low = draw(st.integers(1, high))
    lengths = draw(arrays(np.int64, size, elements=st.integers(low, high)))
    num_seqs = draw(arrays(np.float64, size, elements=st.floats(0, 50, allow_nan=False, allow_infinity=False)))
    seed = draw(st.integers(0, 2**32))
    epoch = draw(st.integers(0, 10_000))
    drop_last = draw(st.booleans())
    return MultipackSampler(lengths, num_seqs, capacity, num_ranks, seed, drop_last=drop_last), epoch


def chat_lengths(n: int, seed: int, cap: int) -> np.ndarray:
    """A quick lognormal chat-like mix (median ~100 tokens) with a long tail, clipped to `cap`."""
    rng = np.random.default_rng(seed)
    x = np.where(rng.random(n) < 0.05, rng.lognormal(np.log(1800), 0.9, n), rng.lognormal(np.log(95), 0.95, n))
    return np.clip(np.rint(x), 1, cap).astype(np.int64)


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho, with tied values given their average rank (steps are often exactly full)."""

    def ranks(a):
        _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return (first + (counts - 1) / 2)[inverse]

    rx, ry = ranks(x), ranks(y)
    return 0.0 if rx.std() == 0 or ry.std() == 0 else float(np.corrcoef(rx, ry)[0, 1])


def all_batches(plan: EpochPlan) -> list[np.ndarray]:
    return [b for step in plan.batches for b in step]


# --- property tests: one per invariant ------------------------------------------------------------


@PROPERTY
@given(packing_inputs())
def test_each_index_used_at_most_once_and_used_plus_dropped_is_everything(case):
    sampler, epoch = case
    plan = sampler.plan(epoch)
    used = np.concatenate(all_batches(plan))
    assert len(np.unique(used)) == len(used)
    assert len(np.intersect1d(used, plan.dropped)) == 0
    assert np.array_equal(np.sort(np.concatenate([used, plan.dropped])), np.arange(len(sampler.lengths)))
    assert all(b.dtype == np.int64 and np.all(np.diff(b) > 0) for b in all_batches(plan))


@PROPERTY
@given(packing_inputs())
def test_no_batch_exceeds_batch_max_len(case):
    sampler, epoch = case
    plan = sampler.plan(epoch)
    assert max(int(sampler.lengths[b].sum()) for b in all_batches(plan)) <= sampler.batch_max_len


@PROPERTY
@given(packing_inputs())
def test_every_rank_gets_the_same_number_of_non_empty_batches(case):
    sampler, epoch = case
    plan = sampler.plan(epoch)
    assert plan.num_steps >= 1
    assert all(len(step) == sampler.num_ranks for step in plan.batches)
    per_rank = [plan.rank_batches(r) for r in range(sampler.num_ranks)]
    assert {len(batches) for batches in per_rank} == {plan.num_steps}
    assert min(len(b) for batches in per_rank for b in batches) >= 1


@PROPERTY
@given(packing_inputs())
def test_drops_only_what_cannot_reach_every_rank(case):
    """Without drop_last, only a final step with fewer sequences than ranks may be dropped."""
    sampler, epoch = case
    plan = MultipackSampler(sampler.lengths, sampler.num_seqs, sampler.batch_max_len, sampler.num_ranks,
                            sampler.seed, drop_last=False).plan(epoch)
    assert len(plan.dropped) < sampler.num_ranks
    if sampler.num_ranks == 1:
        assert len(plan.dropped) == 0


@PROPERTY
@given(packing_inputs())
def test_default_drops_less_than_one_step_and_nothing_on_one_rank(case):
    """The default drops at most the incomplete last step's worth of tokens, and only with several ranks (as OpenChat)."""
    sampler, epoch = case
    plan = MultipackSampler(sampler.lengths, sampler.num_seqs, sampler.batch_max_len, sampler.num_ranks,
                            sampler.seed).plan(epoch)
    assert int(sampler.lengths[plan.dropped].sum()) < sampler.num_ranks * sampler.batch_max_len
    if sampler.num_ranks == 1:
        assert len(plan.dropped) == 0


@PROPERTY
@given(packing_inputs())
def test_global_num_seqs_sums_all_ranks_of_each_step(case):
    sampler, epoch = case
    plan = sampler.plan(epoch)
    expected = np.array([[sampler.num_seqs[b].sum() for b in step] for step in plan.batches])
    assert plan.rank_num_seqs.shape == (plan.num_steps, sampler.num_ranks)
    assert plan.global_num_seqs.dtype == np.float64 and plan.global_num_seqs.shape == (plan.num_steps,)
    np.testing.assert_allclose(plan.rank_num_seqs, expected, rtol=1e-12)
    np.testing.assert_allclose(plan.global_num_seqs, expected.sum(axis=1), rtol=1e-12)


@PROPERTY
@given(packing_inputs())
def test_efficiency_is_used_over_offered_tokens(case):
    sampler, epoch = case
    plan = sampler.plan(epoch)
    used = sum(int(sampler.lengths[b].sum()) for b in all_batches(plan))
    assert plan.used_tokens == used
    assert plan.offered_tokens == plan.num_steps * sampler.num_ranks * sampler.batch_max_len
    assert plan.efficiency == pytest.approx(used / plan.offered_tokens)
    assert 0 < plan.efficiency <= 1


@PROPERTY
@given(packing_inputs())
def test_same_seed_and_epoch_give_the_same_plan(case):
    sampler, epoch = case
    a = sampler.plan(epoch)
    b = MultipackSampler(sampler.lengths.copy(), sampler.num_seqs.copy(), sampler.batch_max_len, sampler.num_ranks,
                         sampler.seed, drop_last=sampler.drop_last).plan(epoch)
    assert a.num_steps == b.num_steps
    assert all(np.array_equal(x, y) for x, y in zip(all_batches(a), all_batches(b)))
    assert np.array_equal(a.dropped, b.dropped)
    assert np.array_equal(a.global_num_seqs, b.global_num_seqs)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 1000), st.sampled_from([(512, 1), (2048, 4), (8192, 8), (32768, 2)]))
def test_batch_composition_changes_between_epochs(seed, epoch, config):
    capacity, num_ranks = config
    lengths = chat_lengths(2000, seed, capacity)
    sampler = MultipackSampler(lengths, np.ones(len(lengths)), capacity, num_ranks, seed)
    # batches of two or more sequences (a sequence as long as the batch is always alone: not a choice)
    bins = [{frozenset(b.tolist()) for b in all_batches(sampler.plan(e)) if len(b) > 1} for e in (epoch, epoch + 1)]
    shared = len(bins[0] & bins[1]) / len(bins[0])
    assert shared < 0.15  # new groupings of sequences, not the same batches reordered


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 1000), st.sampled_from([(512, 1), (2048, 1), (2048, 4), (8192, 8)]))
def test_batch_order_is_not_sorted_by_length(seed, epoch, config):
    capacity, num_ranks = config
    lengths = chat_lengths(max(3000, 120 * capacity * num_ranks // 250), seed, capacity)  # ~100+ steps
    plan = MultipackSampler(lengths, np.ones(len(lengths)), capacity, num_ranks, seed).plan(epoch)
    step_max = np.array([max(int(lengths[b].max()) for b in step) for step in plan.batches])
    step_tokens = np.array([sum(int(lengths[b].sum()) for b in step) for step in plan.batches])
    assert plan.num_steps >= 80
    assert not np.all(np.diff(step_max) >= 0) and not np.all(np.diff(step_max) <= 0)
    # and not merely unsorted: neither the longest sequence nor the fill of a step trends over the epoch
    # (4.5 standard errors of Spearman's rho under a random order; sorted orders give |rho| ~ 0.9)
    for stat in (step_max, step_tokens):
        assert abs(rank_correlation(np.arange(plan.num_steps), stat)) < 4.5 / math.sqrt(plan.num_steps - 1)


@settings(max_examples=25, deadline=None)
@given(packing_inputs())
def test_drop_last_only_drops_a_final_step_that_lowers_efficiency(case):
    sampler, epoch = case
    keep = MultipackSampler(sampler.lengths, sampler.num_seqs, sampler.batch_max_len, sampler.num_ranks, sampler.seed)
    drop = MultipackSampler(sampler.lengths, sampler.num_seqs, sampler.batch_max_len, sampler.num_ranks, sampler.seed,
                            drop_last=True)
    a, b = keep.plan(epoch), drop.plan(epoch)
    assert b.efficiency >= a.efficiency
    assert b.num_steps in (a.num_steps, a.num_steps - 1)
    assert (b.num_steps < a.num_steps) == (len(b.dropped) > len(a.dropped))


@PROPERTY
@given(st.data())
def test_completing_the_final_step_never_overfills_or_empties_a_bin(data):
    """The final-step repair on its own: bins only shrink or stay under a load that already fitted."""
    num_ranks = data.draw(st.integers(2, 8))
    items = st.lists(st.integers(1, 60), min_size=1, max_size=6)
    head = data.draw(st.lists(items, min_size=num_ranks, max_size=num_ranks))  # one full step, to borrow from
    tail = data.draw(st.lists(items, min_size=1, max_size=num_ranks - 1))
    bins = head + tail
    assume(sum(map(len, bins)) >= len(head) + num_ranks)  # the caller's precondition: enough sequences
    lengths = np.array([x for b in bins for x in b], dtype=np.int64)
    bin_of = np.repeat(np.arange(len(bins)), [len(b) for b in bins])
    before = np.bincount(bin_of, weights=lengths)
    _complete_final_step(bin_of, lengths, len(bins), num_ranks)

    after = np.bincount(bin_of, weights=lengths)
    assert len(after) == len(head) + num_ranks and np.all(np.bincount(bin_of) >= 1)
    assert np.all(after[: len(head)] <= before[: len(head)])  # borrowing only takes from full steps
    # a final bin is never heavier than the heaviest original final bin, or the single sequence it holds
    assert after[len(head):].max() <= max(before[len(head):].max(), lengths.max())


# --- quality on a realistic mix (efficiency, not timing) ----------------------------------------


@pytest.mark.parametrize("capacity,num_ranks,floor", [(2048, 1, 0.99), (8192, 1, 0.99), (8192, 8, 0.98)])
def test_realistic_mix_packs_tightly_and_drops_nothing(capacity, num_ranks, floor):
    lengths = chat_lengths(20_000, 7, capacity)
    plan = MultipackSampler(lengths, np.ones(len(lengths)), capacity, num_ranks, seed=3, drop_last=False).plan(0)
    assert plan.efficiency >= floor
    assert len(plan.dropped) == 0
    # near the lower bound on bins: at most one step more than a perfect packing needs
    assert plan.num_steps <= math.ceil(lengths.sum() / (capacity * num_ranks)) + 1


@pytest.mark.parametrize("capacity,num_ranks", [(8192, 8), (81920, 8)])
def test_default_fills_whole_steps_and_drops_a_random_sample(capacity, num_ranks):
    """bench/sampler_bench.py's rows: at 81920 x 8 (~20 steps an epoch) completing the last step costs 4 points of
    efficiency (95.9%); the default drops it as OpenChat does (99.8%), and what it drops is a random sample, not the
    shortest leftovers of the emptiest bins."""
    from bench.length_mix import realistic_lengths

    lengths = np.minimum(realistic_lengths(50_000, seed=0), capacity).astype(np.int64)
    sampler = MultipackSampler(lengths, np.ones(len(lengths)), capacity, num_ranks, seed=3)
    plans = [sampler.plan(epoch) for epoch in range(4)]
    dropped = np.concatenate([p.dropped for p in plans])
    assert min(p.efficiency for p in plans) >= 0.998
    assert lengths[dropped].sum() <= 0.02 * len(plans) * lengths.sum()
    assert len(dropped) >= 50 and 0.6 < np.median(lengths[dropped]) / np.median(lengths) < 1.6  # emptiest bins: ~0.15


def test_train_config_and_sampler_share_the_drop_last_default():
    import inspect

    from openchat_core.training.settings import TrainConfig

    assert TrainConfig.model_fields["drop_last"].default is inspect.signature(MultipackSampler).parameters["drop_last"].default


@pytest.mark.parity
@pytest.mark.parametrize("capacity,num_ranks,mix", [(2048, 1, "chat"), (8192, 1, "chat"), (8192, 8, "chat"),
                                                    (81920, 8, "chat"), (81920, 8, "bench")])
def test_at_least_as_efficient_as_openchat(capacity, num_ranks, mix):
    """Both samplers with their defaults over the same epochs, counted alike: only placed tokens count as used (each
    drops its incomplete last step). "bench" is bench/sampler_bench.py's data (50,000 lengths, ~20 steps an epoch at
    81920 x 8); "chat" has 20,000 (8 steps), where the last step weighs the most."""
    multipack = pytest.importorskip("ochat.training_deepspeed.multipack_sampler")
    if mix == "bench":
        from bench.length_mix import realistic_lengths

        lengths = np.minimum(realistic_lengths(50_000, seed=0), capacity).astype(np.int32)
    else:
        lengths = chat_lengths(20_000, 11, capacity).astype(np.int32)
    theirs = multipack.MultipackDistributedSampler(lengths, np.ones(len(lengths)), capacity, num_ranks, 0, seed=0)
    ours = MultipackSampler(lengths, np.ones(len(lengths)), capacity, num_ranks, seed=0)
    used = offered = 0
    for epoch in range(3):
        theirs.generate_batches(epoch, set_stats=True)
        plan = ours.plan(epoch)
        used, offered = used + plan.used_tokens, offered + plan.offered_tokens
    assert used / offered >= theirs.efficiency()


# --- targeted unit tests ------------------------------------------------------------------------


def test_overlong_sequences_raise_with_count_longest_indices_and_fix():
    lengths = np.array([10, 5000, 20, 9000, 30, 4097])
    with pytest.raises(OverlongSequenceError) as info:
        MultipackSampler(lengths, np.ones(6), batch_max_len=4096)
    msg = str(info.value)
    assert "3 of 6 sequences" in msg and "batch_max_len=4096" in msg
    assert "longest: 9000" in msg and "1, 3, 5" in msg
    assert "Raise batch_max_len to at least 9000" in msg and "truncate" in msg
    assert isinstance(info.value, ValueError)
    assert info.value.indices.tolist() == [1, 3, 5] and info.value.longest == 9000


def test_overlong_message_elides_long_index_lists():
    with pytest.raises(OverlongSequenceError, match=r"indices: 0, 1, 2, 3, 4, \.\.\.\)"):
        MultipackSampler(np.full(50, 100), np.ones(50), batch_max_len=99)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(lengths=np.ones((2, 2), dtype=int)), ValueError, "1-D"),
        (dict(lengths=np.array([], dtype=int), num_seqs=np.array([])), ValueError, "empty"),
        (dict(lengths=np.array([1.5, 2.0, 3.0])), TypeError, "integer token counts"),
        (dict(lengths=np.array([3, 0, 4])), ValueError, "length <= 0.*indices: \\[1\\]"),
        (dict(lengths=np.array([3, -2, 4])), ValueError, "length <= 0"),
        (dict(num_seqs=np.ones(2)), ValueError, "one entry per sequence"),
        (dict(num_seqs=np.array([1.0, np.nan, 1.0])), ValueError, "finite and >= 0.*indices: \\[1\\]"),
        (dict(num_seqs=np.array([1.0, -1.0, 1.0])), ValueError, "finite and >= 0"),
        (dict(num_seqs=np.array(["a", "b", "c"])), TypeError, "numeric"),
        (dict(batch_max_len=0), ValueError, "batch_max_len must be a positive integer"),
        (dict(batch_max_len=2048.0), TypeError, "batch_max_len must be an integer"),
        (dict(num_ranks=0), ValueError, "num_ranks must be a positive integer"),
        (dict(num_ranks=True), TypeError, "num_ranks must be an integer"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
    ],
)
def test_bad_inputs_are_rejected_with_a_clear_message(kwargs, error, match):
    args = dict(lengths=np.array([3, 4, 5]), num_seqs=np.ones(3), batch_max_len=16, num_ranks=1, seed=0) | kwargs
    with pytest.raises(error, match=match):
        MultipackSampler(**args)


def test_bad_epoch_and_rank_are_rejected():
    sampler = MultipackSampler(np.array([3, 4, 5]), np.ones(3), 16, num_ranks=2)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        sampler.plan(-1)
    with pytest.raises(IndexError, match="rank 2 out of range"):
        sampler.plan(0).rank_batches(2)


def test_numpy_integer_arguments_are_accepted():
    plan = MultipackSampler(np.array([3, 4], dtype=np.int32), np.array([1, 2], dtype=np.float32), np.int64(8),
                            np.int32(1), np.uint8(3)).plan(np.int64(2))
    assert plan.num_steps == 1 and plan.used_tokens == 7


def test_single_sequence():
    plan = MultipackSampler(np.array([700]), np.array([2.5]), batch_max_len=1000).plan(0)
    assert plan.num_steps == 1 and plan.batches[0][0].tolist() == [0]
    assert plan.efficiency == pytest.approx(0.7)
    assert plan.global_num_seqs.tolist() == [2.5] and len(plan.dropped) == 0


def test_fewer_sequences_than_ranks_is_an_error_that_says_why():
    with pytest.raises(ValueError, match="3 sequences cannot feed num_ranks=8: every rank needs at least one"):
        MultipackSampler(np.array([5, 6, 7]), np.ones(3), 100, num_ranks=8)


def test_as_many_sequences_as_ranks_gives_one_sequence_each():
    plan = MultipackSampler(np.array([5, 6, 7, 8]), np.ones(4), 100, num_ranks=4).plan(0)
    assert plan.num_steps == 1
    assert sorted(int(b[0]) for b in plan.batches[0]) == [0, 1, 2, 3]
    assert [len(b) for b in plan.batches[0]] == [1, 1, 1, 1]


def test_final_step_is_completed_by_splitting_bins_not_by_dropping():
    # 40 short sequences fit one bin, but 4 ranks each need a non-empty one: split, balanced, nothing dropped
    plan = MultipackSampler(np.full(40, 10), np.ones(40), 1000, num_ranks=4, drop_last=False).plan(0)
    assert plan.num_steps == 1 and len(plan.dropped) == 0
    assert sorted(len(b) for b in plan.batches[0]) == [10, 10, 10, 10]


def test_final_step_borrows_a_sequence_when_it_has_fewer_than_ranks():
    # best fit gives {60,40} {60,40} {30}: the final step needs a second sequence, taken from a full bin
    lengths = np.array([60, 40, 60, 40, 30])
    plan = MultipackSampler(lengths, np.ones(5), 100, num_ranks=2, drop_last=False).plan(0)
    assert plan.num_steps == 2 and len(plan.dropped) == 0
    assert sorted(int(lengths[b].sum()) for b in all_batches(plan)) == [30, 40, 60, 100]


def test_only_the_sequences_that_cannot_reach_every_rank_are_dropped():
    # 9 full-length sequences on 8 ranks: one step of 8; the ninth cannot form a step on its own
    plan = MultipackSampler(np.full(9, 64), np.ones(9), 64, num_ranks=8).plan(0)
    assert plan.num_steps == 1 and len(plan.dropped) == 1
    assert plan.efficiency == 1.0


def test_seed_and_epoch_do_not_collide():
    lengths = chat_lengths(500, 0, 1024)
    a = MultipackSampler(lengths, np.ones(500), 1024, seed=0).plan(1)
    b = MultipackSampler(lengths, np.ones(500), 1024, seed=1).plan(0)
    assert [x.tolist() for x in all_batches(a)] != [x.tolist() for x in all_batches(b)]
