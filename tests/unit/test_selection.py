"""Best-epoch selection and champion comparison rules."""

from __future__ import annotations

import pytest

from openchat_core.registry.selection import EpochScore, SelectionError, compare_with_champion, select_best


def scores(*values, loss=None):
    return [EpochScore(i, {"gen/accuracy": v, **({"eval/loss": loss[i]} if loss else {})}) for i, v in enumerate(values)]


def test_maximize_and_minimize():
    assert select_best(scores(0.2, 0.6, 0.4), "gen/accuracy", "maximize").epoch == 1
    assert select_best([EpochScore(0, {"eval/loss": 2.0}), EpochScore(1, {"eval/loss": 1.5}), EpochScore(2, {"eval/loss": 1.7})],
                       "eval/loss", "minimize").epoch == 1


def test_ties_go_to_the_later_epoch_or_the_lower_loss():
    assert select_best(scores(0.5, 0.5, 0.1), "gen/accuracy", "maximize", "later_epoch").epoch == 1
    assert select_best(scores(0.5, 0.5, 0.5, loss=[1.0, 2.0, 1.5]), "gen/accuracy", "maximize", "lower_loss").epoch == 0


def test_epochs_without_the_metric_are_skipped_and_named():
    selection = select_best([EpochScore(0, {"gen/accuracy": 0.3}), EpochScore(1, {}), EpochScore(2, {"gen/accuracy": 0.2})],
                            "gen/accuracy", "maximize")
    assert selection.epoch == 0 and "epochs [1] had no gen/accuracy" in selection.reason


def test_no_epoch_with_the_metric_is_a_clear_error():
    with pytest.raises(SelectionError, match=r"no epoch has metric 'gen/accuracy' \(available: \['eval/loss'\]\)"):
        select_best([EpochScore(0, {"eval/loss": 1.0})], "gen/accuracy", "maximize")


@pytest.mark.parametrize(("candidate", "champion", "direction", "margin", "promote"), [
    (0.6, 0.5, "maximize", 0.0, True), (0.5, 0.5, "maximize", 0.0, False), (0.52, 0.5, "maximize", 0.05, False),
    (0.4, 0.5, "maximize", 0.0, False), (1.0, 1.2, "minimize", 0.1, True), (1.15, 1.2, "minimize", 0.1, False),
    (0.1, None, "maximize", 0.5, True),
])
def test_champion_moves_only_on_improvement_by_the_margin(candidate, champion, direction, margin, promote):
    result = compare_with_champion(candidate, champion, "m", direction, margin)
    assert result.promote is promote
    assert ("challenger" in result.reason) is (not promote)
