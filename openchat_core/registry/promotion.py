"""Promotion decisions: candidate vs champion on the same evaluation, rollback, and manual moves.

A champion's recorded metric is reused only when it was measured on the same evaluation (same
`openchat.eval_key`: eval-set digest, condition, system prompt, held-out data); otherwise the
champion is evaluated again with the caller's evaluator, and its tags are updated. `champion`
moves only when the candidate is strictly better by at least the margin; otherwise the candidate
becomes `challenger`. Every outcome is recorded (version tags + the registered model's log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from openchat_core.registry.selection import Direction, compare_with_champion
from openchat_core.registry.store import CHALLENGER, CHAMPION, ModelRegistry, RegistryError, VersionInfo

EVAL_KEY_TAG = "openchat.eval_key"
Evaluator = Callable[[Path], dict[str, float]]


@dataclass(frozen=True)
class Decision:
    action: str  # "promoted" | "challenger" | "unchanged" | "rollback" | "manual"
    candidate: str
    champion_before: str | None
    champion_after: str | None
    metric: str | None
    candidate_value: float | None
    champion_value: float | None
    margin: float | None
    reason: str
    champion_reevaluated: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def metric_tags(metrics: dict[str, float], eval_key: str) -> dict[str, str]:
    return {EVAL_KEY_TAG: eval_key, **{f"openchat.metric.{k}": repr(float(v)) for k, v in metrics.items()}}


def _record(registry: ModelRegistry, decision: Decision) -> Decision:
    registry.set_tags(decision.candidate, {"openchat.decision": decision.action, "openchat.decision_reason": decision.reason[:4000],
                                           "openchat.compared_with": decision.champion_before or "-"})
    registry.log_decision(decision.to_dict())
    return decision


def champion_value(registry: ModelRegistry, champion: VersionInfo, metric: str, eval_key: str,
                   evaluator: Evaluator | None) -> tuple[float, bool]:
    """The champion's value of `metric` on this evaluation: recorded if comparable, else measured now."""
    recorded = champion.metric(metric)
    if recorded is not None and champion.tags.get(EVAL_KEY_TAG) == eval_key:
        return recorded, False
    if evaluator is None:
        raise RegistryError(f"champion v{champion.version} was evaluated on a different evaluation (eval key "
                            f"{champion.tags.get(EVAL_KEY_TAG)!r} vs {eval_key!r}); an evaluator is needed to compare fairly")
    _, path = registry.resolve(champion.version)
    metrics = evaluator(path)
    if metric not in metrics:
        raise RegistryError(f"re-evaluating champion v{champion.version} produced no {metric!r} (got {sorted(metrics)})")
    registry.set_tags(champion.version, metric_tags(metrics, eval_key))
    return metrics[metric], True


def promote_candidate(registry: ModelRegistry, candidate: VersionInfo, metric: str, direction: Direction, margin: float,
                      eval_key: str, evaluator: Evaluator | None = None) -> Decision:
    """Compare the candidate with the champion and move `champion` or set `challenger`, recording why."""
    value = candidate.metric(metric)
    if value is None:
        raise RegistryError(f"candidate v{candidate.version} has no recorded {metric!r}")
    champion = registry.by_alias(CHAMPION)
    if champion is not None and champion.version == candidate.version:
        return _record(registry, Decision("unchanged", candidate.version, champion.version, champion.version, metric, value, value,
                                          margin, "candidate is already champion"))
    champ_value, reevaluated = (champion_value(registry, champion, metric, eval_key, evaluator) if champion else (None, False))
    comparison = compare_with_champion(value, champ_value, metric, direction, margin)
    before = champion.version if champion else None
    if comparison.promote:
        registry.set_alias(CHAMPION, candidate.version)
        if registry.by_alias(CHALLENGER) and registry.by_alias(CHALLENGER).version == candidate.version:
            registry.drop_alias(CHALLENGER)
        decision = Decision("promoted", candidate.version, before, candidate.version, metric, value, champ_value, margin,
                            comparison.reason, reevaluated)
    else:
        registry.set_alias(CHALLENGER, candidate.version)
        decision = Decision("challenger", candidate.version, before, before, metric, value, champ_value, margin, comparison.reason, reevaluated)
    return _record(registry, decision)


def rollback(registry: ModelRegistry, reason: str = "manual rollback") -> Decision:
    """Point `champion` back at the version that held it before the current one."""
    current = registry.by_alias(CHAMPION)
    if current is None:
        raise RegistryError(f"registered model {registry.name!r} has no champion to roll back")
    earlier = [v for v in registry.champion_history() if v != current.version]
    if not earlier:
        raise RegistryError(f"champion v{current.version} of {registry.name!r} has no previous champion to roll back to")
    target = earlier[-1]
    registry.client.set_registered_model_alias(registry.name, CHAMPION, target)
    registry.set_champion_history(earlier)  # the rolled-back version leaves the history
    decision = Decision("rollback", target, current.version, target, None, None, None, None,
                        f"{reason}: champion v{current.version} -> v{target}")
    registry.set_tags(current.version, {"openchat.rolled_back_from": "true"})
    return _record(registry, decision)


def manual_promote(registry: ModelRegistry, version: str, reason: str) -> Decision:
    """A person's decision: make `version` champion regardless of metrics (recorded as manual)."""
    target = registry.version(version)
    before = registry.by_alias(CHAMPION)
    registry.set_alias(CHAMPION, target.version)
    return _record(registry, Decision("manual", target.version, before.version if before else None, target.version, None, None, None,
                                      None, reason))
