"""Rank-aware multipack sampler: pack variable-length sequences into padding-free batches.

Every optimiser step gives each of `num_ranks` data-parallel ranks one batch (a "bin") of whole
sequences totalling at most `batch_max_len` tokens. The plan for an epoch is computed up front,
identically on every rank, from (seed, epoch) alone, so ranks agree on the number of steps (a
collective can't hang) and on the global `num_seqs` of each step (the loss normaliser).

Algorithm. OpenChat's sampler binary-searches the longest prefix of the permutation that fits
`num_ranks` bins, so every step keeps whatever gaps that prefix left (with one rank it is plain
next-fit, ~85% full), and it drops the incomplete last step: the suffix of the permutation that
cannot fill a bin for every rank. Here:

1. Permute the dataset with a generator seeded by (seed, epoch).
2. Walk the permutation in windows of up to `_WINDOW_BINS` bins' worth of tokens (and at least
   `_MIN_WINDOWS` windows per epoch) and pack each window with best-fit-decreasing. Bins with more
   free space than a small slack are not closed: their sequences are carried into the next window
   (capped, so adversarial inputs stay linear), which makes window edges nearly free. Windows are
   wide, so the plentiful short sequences fill the gaps the long ones leave (close to the minimum
   bin count); they are random and never the whole dataset, so bin compositions change from epoch
   to epoch (one window over a sorted dataset would rebuild the same bins every epoch).
3. Sort bins by fill and group them `num_ranks` at a time into steps. When the bins do not fill a
   whole number of steps, the last step of the epoch is incomplete. Default (`drop_last=True`):
   it is dropped as OpenChat drops it, counted the same way (dropped tokens take no slots), and
   only when that raises efficiency: a suffix of the permutation holding the incomplete step's
   tokens is left out and the rest repacked into whole steps, so the dropped sequences are a
   uniform random sample (about 0.7% of the tokens at 81920 x 8, a different one every epoch;
   the leftovers of the emptiest bins would instead be mostly the shortest sequences, epoch after
   epoch). With one rank no step is incomplete and nothing is dropped, as in OpenChat. Carrying
   the leftover into the next epoch would keep every token but make each epoch's plan depend on all
   earlier ones (resume and per-epoch evaluation need self-contained epochs). With
   `drop_last=False`, or when repacking does not land on whole steps, the incomplete step is
   completed with non-empty bins by moving single sequences (always within capacity), then
   balanced: nothing is dropped, at the cost of one part-empty step (95.9% efficiency at 81920 x 8
   on a realistic mix, against OpenChat's 99.8%). Either way sequences are also dropped when the
   dataset has fewer sequences than the steps need bins (`dropped` reports them all).
4. Shuffle step order and the rank order within each step, so lengths are not sorted in time.

Guarantees (tested as properties): each index at most once per epoch and used + dropped = all;
with one rank or `drop_last=False`, fewer than `num_ranks` sequences dropped;
no batch over `batch_max_len`; every rank has a non-empty batch at every step; the same (seed,
epoch) gives the same plan on any machine. Numba compiles the packing loop on first use (about
three seconds cold, import included; cached on disk afterwards).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
from numba import njit

_WINDOW_BINS = 64  # bins' worth of tokens per best-fit window: wider packs tighter, cost is linear in it
_MIN_WINDOWS = 8  # windows per epoch at least, so small datasets still get new bin compositions each epoch
_CARRY_SHARE = 4  # carried tokens are capped at window / _CARRY_SHARE, which bounds the work per window
_SLACK_DIVISOR = 256  # a bin at least (1 - 1/256) full is closed even if a short sequence could still fit
_MAX_REPACKS = 4  # drop_last: repacks of a shorter prefix until it fills whole steps; then the final step is kept


class OverlongSequenceError(ValueError):
    """Some sequences are longer than `batch_max_len`: no batch could ever hold them."""

    def __init__(self, lengths: np.ndarray, batch_max_len: int):
        over = np.flatnonzero(lengths > batch_max_len)
        self.indices = over
        self.longest = int(lengths[over].max())
        self.batch_max_len = batch_max_len
        shown = ", ".join(str(i) for i in over[:5]) + (", ..." if len(over) > 5 else "")
        super().__init__(
            f"{len(over)} of {len(lengths)} sequences are longer than batch_max_len={batch_max_len} tokens "
            f"(longest: {self.longest} tokens; indices: {shown}). No batch can hold them. Raise batch_max_len "
            f"to at least {self.longest}, or truncate/filter them upstream (pretokenize with a maximum length "
            f"of {batch_max_len})."
        )


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """The batches of one epoch for all ranks, with the statistics the trainer logs.

    `batches[step][rank]` holds sorted int64 dataset indices. `global_num_seqs[step]` is the
    sum of `num_seqs` over all ranks' batches at that step: the loss normaliser every rank needs
    without a collective. `dropped` lists indices not placed this epoch: with `drop_last`, the random
    sample left out with an incomplete last step (multi-rank plans only); otherwise empty in almost all plans.
    """

    epoch: int
    num_ranks: int
    batches: list[list[np.ndarray]]
    global_num_seqs: np.ndarray
    rank_num_seqs: np.ndarray
    used_tokens: int
    offered_tokens: int
    dropped: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.batches)

    @property
    def efficiency(self) -> float:
        """Share of offered token slots (steps x ranks x batch_max_len) that hold real tokens."""
        return self.used_tokens / self.offered_tokens if self.offered_tokens else 0.0

    def rank_batches(self, rank: int) -> list[np.ndarray]:
        """The batches rank `rank` trains on, one per step."""
        if not 0 <= rank < self.num_ranks:
            raise IndexError(f"rank {rank} out of range for a plan with num_ranks={self.num_ranks}")
        return [step[rank] for step in self.batches]


@njit(cache=True)
def _pack_windows(lengths, capacity, window_tokens, carry_cap, slack):  # pragma: no cover - compiled
    """Best-fit-decreasing over consecutive windows of `lengths`; returns (bin id per item, bin count).

    Bins of a window with more than `slack` free tokens go back (up to `carry_cap` tokens,
    emptiest first) to be repacked with the next window; the final window closes everything.
    """
    n = lengths.shape[0]
    bin_of = np.full(n, -1, np.int64)
    items = np.empty(n, np.int64)
    carry = np.empty(n, np.int64)
    local_bin = np.empty(n, np.int64)
    local_load = np.empty(n, np.int64)
    global_id = np.empty(n, np.int64)
    num_bins = 0
    n_carry = 0
    pos = 0
    while pos < n or n_carry > 0:
        m = 0
        tokens = 0
        for k in range(n_carry):
            items[m] = carry[k]
            tokens += lengths[carry[k]]
            m += 1
        while pos < n and tokens < window_tokens:
            items[m] = pos
            tokens += lengths[pos]
            m += 1
            pos += 1
        last = pos >= n

        order = np.argsort(-lengths[items[:m]], kind="mergesort")
        n_local = 0
        for o in order:
            size = lengths[items[o]]
            best = -1
            best_free = capacity + 1
            for b in range(n_local):
                free = capacity - local_load[b]
                if size <= free < best_free:
                    best = b
                    best_free = free
                    if free == size:
                        break
            if best == -1:
                best = n_local
                local_load[best] = 0
                n_local += 1
            local_load[best] += size
            local_bin[o] = best

        carried = 0
        for b in np.argsort(local_load[:n_local], kind="mergesort"):  # emptiest first
            free = capacity - local_load[b]
            if not last and free > slack and carried + local_load[b] <= carry_cap:
                global_id[b] = -1
                carried += local_load[b]
            else:
                global_id[b] = num_bins
                num_bins += 1
        n_carry = 0
        for k in range(m):
            g = global_id[local_bin[k]]
            if g >= 0:
                bin_of[items[k]] = g
            else:
                carry[n_carry] = items[k]
                n_carry += 1
    return bin_of, num_bins


def _complete_final_step(bin_of: np.ndarray, lengths: np.ndarray, num_bins: int, num_ranks: int) -> None:
    """Turn the last `num_bins % num_ranks` bins into `num_ranks` non-empty bins, editing `bin_of`.

    New bins take the next ids. A sequence only ever moves out of a bin holding at least two, into
    a bin whose load plus that sequence stays below the donor's load, so no bin exceeds a load that
    already fitted, no donor is emptied, and each move lowers the sum of squared loads (the step
    ends balanced). If the final bins hold fewer sequences than ranks, the shortest sequences of the
    most crowded other bins are borrowed. The caller guarantees len(bin_of) >= the bins needed.
    """
    first = num_bins - num_bins % num_ranks
    final = [np.flatnonzero(bin_of == b).tolist() for b in range(first, num_bins)]
    final += [[] for _ in range(num_ranks - len(final))]
    missing = num_ranks - sum(map(len, final))
    if missing > 0:
        counts = np.bincount(bin_of, minlength=num_bins)[:first]
        for b in np.argsort(-counts, kind="stable"):
            if missing <= 0 or counts[b] < 2:
                break
            members = np.flatnonzero(bin_of == b)
            spare = members[np.argsort(lengths[members], kind="stable")[: min(counts[b] - 1, missing)]]
            final[-1].extend(spare.tolist())
            missing -= len(spare)

    loads = [int(lengths[members].sum()) for members in final]

    def move(h: int, lo: int) -> bool:
        sizes = lengths[final[h]]
        gap = loads[h] - loads[lo]
        ok = np.flatnonzero(sizes < gap)
        if len(final[h]) < 2 or len(ok) == 0:
            return False
        j = int(ok[np.argmin(np.abs(2 * sizes[ok] - gap))])  # the move that best evens the pair
        final[lo].append(final[h].pop(j))
        loads[h] -= int(sizes[j])
        loads[lo] += int(sizes[j])
        return True

    for lo in [i for i in range(num_ranks) if not final[i]]:  # every rank gets a sequence
        move(max((i for i in range(num_ranks) if len(final[i]) >= 2), key=loads.__getitem__), lo)
    for _ in range(4 * num_ranks * num_ranks):  # then even the step out; a bounded number of moves suffices
        donors = [i for i in range(num_ranks) if len(final[i]) >= 2]
        if not donors or not move(max(donors, key=loads.__getitem__), min(range(num_ranks), key=loads.__getitem__)):
            break
    for k, members in enumerate(final):
        bin_of[members] = first + k


class MultipackSampler:
    """Plans padding-free, rank-balanced batches for each epoch (see the module docstring).

    Args:
        lengths: tokens per sequence (positive integers).
        num_seqs: per-sequence loss normaliser (OpenChat: the sum of the sequence's loss weights).
        batch_max_len: token capacity of one rank's batch.
        num_ranks: data-parallel world size; every rank gets a non-empty batch at every step.
        seed: with the epoch, fully determines the plan.
        drop_last: leave out an epoch's incomplete last step (fewer bins than ranks) when that raises
            efficiency, as OpenChat does, taking a random suffix of the epoch's permutation (see the
            module docstring). False keeps every sequence and completes that step instead (one
            part-empty step per epoch: it costs little time padding-free, since compute follows tokens,
            but it is a smaller, noisier optimizer step).
    """

    def __init__(self, lengths: np.ndarray, num_seqs: np.ndarray, batch_max_len: int, num_ranks: int = 1,
                 seed: int = 0, *, drop_last: bool = True):
        self.batch_max_len = _positive_int("batch_max_len", batch_max_len)
        self.num_ranks = _positive_int("num_ranks", num_ranks)
        self.seed = _non_negative_int("seed", seed)
        self.drop_last = bool(drop_last)
        self.lengths = _as_lengths(lengths)
        self.num_seqs = _as_num_seqs(num_seqs, len(self.lengths))
        if len(self.lengths) < self.num_ranks:
            raise ValueError(
                f"{len(self.lengths)} sequences cannot feed num_ranks={self.num_ranks}: every rank needs at least one "
                "sequence per step. Use fewer ranks or more data."
            )
        if self.lengths.max() > self.batch_max_len:
            raise OverlongSequenceError(self.lengths, self.batch_max_len)

    def plan(self, epoch: int) -> EpochPlan:
        """The batches of `epoch` for every rank; the same (seed, epoch) always gives the same plan."""
        epoch = _non_negative_int("epoch", epoch)
        n, c = self.num_ranks, self.batch_max_len
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))  # (0, 1) != (1, 0), unlike seed + epoch
        perm = rng.permutation(len(self.lengths))
        lengths = self.lengths[perm]
        bin_of, num_bins = self._pack(lengths)
        if self.drop_last and num_bins % n:
            tail_dropped = self._drop_tail(lengths, bin_of, num_bins)
            if tail_dropped is not None:
                bin_of, num_bins = tail_dropped
        if num_bins % n:
            if len(bin_of) >= num_bins + n - num_bins % n:
                _complete_final_step(bin_of, lengths, num_bins, n)
                num_bins += n - num_bins % n
            else:  # fewer sequences than the final step has ranks: it cannot exist
                num_bins -= num_bins % n
                bin_of[bin_of >= num_bins] = -1

        # Random step order and rank order within each step; indices sorted within a batch for read locality.
        num_steps = num_bins // n
        slots = (rng.permutation(num_steps)[:, None] * n + rng.permuted(np.tile(np.arange(n), (num_steps, 1)), axis=1))
        placed = bin_of >= 0
        slot = slots.ravel()[bin_of[placed]]
        indices = perm[placed]
        order = np.argsort(slot * len(perm) + indices)
        indices, slot = indices[order], slot[order]
        ends = np.cumsum(np.bincount(slot, minlength=num_bins)).tolist()
        batches = [indices[start:end] for start, end in zip([0, *ends[:-1]], ends)]
        rank_num_seqs = np.bincount(slot, weights=self.num_seqs[indices], minlength=num_bins).reshape(num_steps, n)
        return EpochPlan(
            epoch=epoch,
            num_ranks=n,
            batches=[batches[s * n:(s + 1) * n] for s in range(num_steps)],
            global_num_seqs=rank_num_seqs.sum(axis=1),
            rank_num_seqs=rank_num_seqs,
            used_tokens=int(lengths[placed].sum()),
            offered_tokens=num_steps * n * c,
            dropped=np.sort(perm[~placed]),
        )

    def _pack(self, lengths: np.ndarray) -> tuple[np.ndarray, int]:
        """Bin of each item of `lengths` (a permuted prefix of the dataset), bins numbered fullest first."""
        c = self.batch_max_len
        window = max(2 * c, min(_WINDOW_BINS * c, int(self.lengths.sum()) // _MIN_WINDOWS))  # the dataset's, not the prefix's
        bin_of, num_bins = _pack_windows(lengths, c, window, window // _CARRY_SHARE,
                                         max(c // _SLACK_DIVISOR, int(self.lengths.min()) - 1))
        loads = np.bincount(bin_of, weights=lengths, minlength=num_bins)
        fullest_first = np.empty(num_bins, dtype=np.int64)
        fullest_first[np.argsort(-loads, kind="stable")] = np.arange(num_bins)
        return fullest_first[bin_of], num_bins

    def _drop_tail(self, lengths: np.ndarray, bin_of: np.ndarray, num_bins: int) -> tuple[np.ndarray, int] | None:
        """Whole steps from a prefix of the permutation, the rest dropped; None when that would not raise efficiency.

        The sequences to drop are a suffix of this epoch's random permutation, as in OpenChat, so they are
        a uniform sample: the leftovers of the emptiest bins would be mostly the shortest sequences,
        epoch after epoch. The suffix holds as many tokens as the bins past the last whole step;
        the prefix is repacked, and again if it does not land on exactly the whole steps (rare).
        """
        n = self.num_ranks
        target = num_bins - num_bins % n
        if len(lengths) < num_bins + n - num_bins % n:
            return None  # too few sequences to complete the final step: plan() drops just its bins' sequences
        keep = len(lengths)
        for _ in range(_MAX_REPACKS):
            if num_bins < target or target < n:
                return None
            if num_bins == target:
                break
            partial = int(lengths[:keep][bin_of >= target].sum())
            keep -= int(np.searchsorted(np.cumsum(lengths[keep - 1::-1]), partial)) + 1  # shortest suffix holding them
            bin_of, num_bins = self._pack(lengths[:keep])
        if num_bins != target:
            return None
        steps = target // n  # completing the final step instead gives one step more, holding every token
        if int(lengths[:keep].sum()) * (steps + 1) <= int(lengths.sum()) * steps:
            return None  # dropping would not raise efficiency
        return np.concatenate([bin_of, np.full(len(lengths) - keep, -1, np.int64)]), num_bins


def _positive_int(name: str, value) -> int:
    v = _non_negative_int(name, value)
    if v == 0:
        raise ValueError(f"{name} must be a positive integer, got 0")
    return v


def _non_negative_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _as_lengths(lengths) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ValueError(f"lengths must be a 1-D array of token counts, got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError("lengths is empty: there is nothing to pack (check the dataset path and filters)")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integer token counts, got dtype {arr.dtype} (cast with .astype(np.int64))")
    bad = np.flatnonzero(arr <= 0)
    if len(bad):
        raise ValueError(f"{len(bad)} sequences have length <= 0 (indices: {bad[:5].tolist()}); "
                         "drop empty sequences upstream")
    return arr.astype(np.int64)


def _as_num_seqs(num_seqs, n: int) -> np.ndarray:
    arr = np.asarray(num_seqs)
    if arr.shape != (n,):
        raise ValueError(f"num_seqs must have one entry per sequence: shape ({n},) expected, got {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"num_seqs must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0))
    if len(bad):
        raise ValueError(f"num_seqs must be finite and >= 0; {len(bad)} entries are not "
                         f"(indices: {bad[:5].tolist()}); check the loss weights upstream")
    return arr
