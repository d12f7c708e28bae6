"""The promotion gate's rule (danvae.mlops.gate._judge) on gate figures written by hand.

Figures and tolerances are multiples of 1/64, exact in binary, so "exactly at the tolerance"
is exact here."""
from __future__ import annotations

import pytest

from danvae.mlops.gate import _judge

TOL, DARK_TOL = 1 / 64, 2 / 64


def _figures(auroc: float | None, darkest: float | None) -> dict:
    return {"auroc": auroc, "auroc_darkest": darkest}


def judge(challenger: dict, champion: dict | None, *, validation_passed: bool | None = True,
          min_auroc: float = 0.5) -> tuple[bool, str]:
    return _judge(challenger, champion, None if champion is None else "3", auroc_tolerance=TOL,
                  dark_tolerance=DARK_TOL, validation_passed=validation_passed, min_auroc=min_auroc)


CHAMPION = _figures(56 / 64, 48 / 64)


def test_a_challenger_as_good_overall_but_worse_in_the_dark_is_refused():
    """Within the overall tolerance (here better overall), yet more than dark_tolerance worse on
    the darkest quintile: refused, and the reason names the darkest quintile."""
    passes, reason = judge(_figures(60 / 64, 48 / 64 - DARK_TOL - 1 / 64), CHAMPION)
    assert not passes
    assert "darkest-quintile AUROC" in reason and "below champion v3" in reason
    assert "AUROC 0.9375 is" not in reason  # the overall figure is not what failed


@pytest.mark.parametrize(("auroc", "darkest", "passes"), [
    (56 / 64 - TOL, 48 / 64, True),                   # exactly at the overall tolerance
    (56 / 64 - TOL - 1 / 64, 48 / 64, False),         # one step past it
    (56 / 64, 48 / 64 - DARK_TOL, True),              # exactly at the darkest-quintile tolerance
    (56 / 64, 48 / 64 - DARK_TOL - 1 / 64, False),    # one step past it
    (56 / 64 - TOL, 48 / 64 - DARK_TOL, True),        # both at their limits
], ids=["auroc-at", "auroc-past", "dark-at", "dark-past", "both-at"])
def test_tolerance_boundaries(auroc: float, darkest: float, passes: bool):
    """Worse by exactly the tolerance passes; worse by more is refused (each figure on its own)."""
    assert judge(_figures(auroc, darkest), CHAMPION)[0] is passes


@pytest.mark.parametrize("challenger, champion", [
    (_figures(None, None), CHAMPION),
    (_figures(56 / 64, 48 / 64), _figures(None, None)),
], ids=["challenger", "champion"])
def test_an_overall_auroc_that_cannot_be_computed_is_refused(challenger: dict, champion: dict):
    """No overall AUROC for either model (one class among the gate images): refused, not waved through."""
    passes, reason = judge(challenger, champion)
    assert not passes and "AUROC cannot be computed" in reason


def test_a_first_champion_without_an_auroc_is_refused():
    """No champion yet and no AUROC to hold against the floor: refused."""
    passes, reason = judge(_figures(None, None), None)
    assert not passes and "AUROC cannot be computed" in reason


def test_a_darkest_quintile_that_cannot_be_computed_is_not_judged():
    """No darkest-quintile AUROC (one class among the darkest fifth): the overall figure decides,
    and the reason says the dark quintile was not judged."""
    passes, reason = judge(_figures(56 / 64, None), _figures(56 / 64, None))
    assert passes and "darkest-quintile AUROC not computable" in reason and "not judged" in reason
    assert not judge(_figures(56 / 64 - TOL - 1 / 64, None), _figures(56 / 64, None))[0]


def test_the_first_champion_floor_and_failed_validation():
    """Without a champion, AUROC at the floor passes and below it is refused; failed data
    validation refuses even figures that would pass."""
    assert judge(_figures(32 / 64, None), None, min_auroc=32 / 64)[0]
    assert not judge(_figures(31 / 64, None), None, min_auroc=32 / 64)[0]
    passes, reason = judge(_figures(60 / 64, 60 / 64), CHAMPION, validation_passed=False)
    assert not passes and reason == "data validation did not pass"


def test_validation_not_checked_is_not_judged_and_says_so():
    """No validation report (the CLI without --validation-report): neither a pass nor a refusal."""
    passes, reason = judge(_figures(60 / 64, 60 / 64), CHAMPION, validation_passed=None)
    assert passes and reason.endswith("validation not checked (no report given)")
    passes, reason = judge(_figures(60 / 64, 60 / 64), CHAMPION, validation_passed=True)
    assert passes and reason.endswith("validation passed")
