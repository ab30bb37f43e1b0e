"""Pick the best epoch by a configured metric, and compare a candidate with the current champion.

Both are pure functions of numbers, so the rules are tested directly and the decisions they
produce can be explained in one sentence (which is what gets recorded).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Direction = Literal["minimize", "maximize"]
TieBreak = Literal["later_epoch", "lower_loss"]
TIE_TOLERANCE = 1e-9


class SelectionError(ValueError):
    """No epoch has the primary metric (e.g. every evaluation failed); the message lists what is available."""


@dataclass(frozen=True)
class EpochScore:
    epoch: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Selection:
    epoch: int
    value: float
    reason: str


def _better(a: float, b: float, direction: Direction) -> bool:
    return a < b if direction == "minimize" else a > b


def select_best(scores: Sequence[EpochScore], metric: str, direction: Direction, tie_break: TieBreak = "later_epoch") -> Selection:
    """The best epoch by `metric`. Ties (within 1e-9) go to the later epoch, or to the lower eval/loss first.

    Epochs without the metric (a failed evaluation) are skipped and named in the reason.
    """
    usable = [s for s in scores if metric in s.metrics and math.isfinite(s.metrics[metric])]
    if not usable:
        available = sorted({k for s in scores for k in s.metrics})
        raise SelectionError(f"no epoch has metric {metric!r} (available: {available or 'none'}); check eval.primary_metric "
                             f"or why evaluation failed")
    best = usable[0]
    for s in usable[1:]:
        a, b = s.metrics[metric], best.metrics[metric]
        if abs(a - b) <= TIE_TOLERANCE:
            if tie_break == "lower_loss":
                la, lb = s.metrics.get("eval/loss", math.inf), best.metrics.get("eval/loss", math.inf)
                if la < lb or (la == lb and s.epoch > best.epoch):
                    best = s
            elif s.epoch > best.epoch:
                best = s
        elif _better(a, b, direction):
            best = s
    skipped = [s.epoch for s in scores if s not in usable]
    ranking = ", ".join(f"ep{s.epoch}={s.metrics[metric]:.4g}" for s in usable)
    reason = f"epoch {best.epoch} has the {'lowest' if direction == 'minimize' else 'highest'} {metric} ({ranking})"
    if skipped:
        reason += f"; epochs {skipped} had no {metric}"
    return Selection(epoch=best.epoch, value=best.metrics[metric], reason=reason)


@dataclass(frozen=True)
class Comparison:
    promote: bool
    improvement: float | None
    reason: str


def compare_with_champion(candidate: float, champion: float | None, metric: str, direction: Direction, margin: float) -> Comparison:
    """Promote only when strictly better by at least `margin` (improvement measured in the metric's good direction)."""
    if champion is None:
        return Comparison(True, None, f"no champion yet; the candidate ({metric}={candidate:.4g}) becomes champion")
    improvement = champion - candidate if direction == "minimize" else candidate - champion
    if improvement > 0 and improvement >= margin:
        return Comparison(True, improvement, f"candidate {metric}={candidate:.4g} beats champion {champion:.4g} by {improvement:.4g} "
                                             f"(margin {margin:.4g})")
    verdict = "is worse than" if improvement < 0 else "does not beat" if improvement == 0 else "beats, but by less than the margin,"
    return Comparison(False, improvement, f"candidate {metric}={candidate:.4g} {verdict} champion {champion:.4g} "
                                          f"(improvement {improvement:.4g}, margin {margin:.4g}): kept as challenger")
