"""Paired statistics: bootstrap coverage, McNemar against the textbook formulas, verdicts, pairing."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from quantstudy.errors import QuantstudyError
from quantstudy.items import ItemResult
from quantstudy.evaluate.stats import (DEGRADED, WITHIN_NOISE, compare_aggregate, compare_task, mcnemar)


def results(correct, task="t", ids=None):
    ids = ids if ids is not None else [str(i) for i in range(len(correct))]
    return [ItemResult(task, i, "", bool(c), float(c)) for i, c in zip(ids, correct)]


def correlated_pair(rng, n, p_base=0.6, keep=0.9, gain=0.1):
    """Baseline ~ Bernoulli(p_base); the variant keeps a right answer w.p. `keep` and fixes a
    wrong one w.p. `gain`, so P(variant right) = p_base*keep + (1-p_base)*gain exactly."""
    base = rng.random(n) < p_base
    var = np.where(base, rng.random(n) < keep, rng.random(n) < gain)
    return base, var


def test_bootstrap_interval_covers_true_recovery_about_95_percent():
    p_base, keep, gain = 0.6, 0.9, 0.1
    true_recovery = (p_base * keep + (1 - p_base) * gain) / p_base   # 0.58 / 0.6
    rng = np.random.default_rng(1234)
    hits, trials = 0, 200
    for trial in range(trials):
        base, var = correlated_pair(rng, 400, p_base, keep, gain)
        cmp = compare_task(results(base), results(var), n_bootstrap=500, seed=trial)
        lo, hi = cmp.recovery_ci
        hits += lo <= true_recovery <= hi
    coverage = hits / trials
    assert 0.90 <= coverage <= 0.99, coverage


def test_paired_interval_is_tighter_than_ignoring_the_pairing():
    # Strongly correlated models: the paired interval must be much narrower than the one an
    # unpaired analysis (independent resampling) would give; otherwise pairing is not happening.
    rng = np.random.default_rng(7)
    base, var = correlated_pair(rng, 1000, 0.6, keep=0.97, gain=0.03)
    cmp = compare_task(results(base), results(var), n_bootstrap=1000)
    paired_width = cmp.recovery_ci[1] - cmp.recovery_ci[0]
    b_res = rng.choice(base, size=(1000, base.size)).mean(axis=1)
    v_res = rng.choice(var, size=(1000, var.size)).mean(axis=1)
    lo, hi = np.quantile(v_res / b_res, [0.025, 0.975])
    assert paired_width < 0.6 * (hi - lo)


def test_mcnemar_exact_on_small_table():
    test = mcnemar(10, 2)
    expected = 2 * sum(math.comb(12, k) for k in range(3)) / 2 ** 12
    assert test.method == "exact binomial"
    assert test.p_value == pytest.approx(expected, rel=1e-12)
    assert test.p_value == pytest.approx(sps.binomtest(2, 12, 0.5).pvalue, rel=1e-9)
    assert mcnemar(2, 10).p_value == test.p_value      # two-sided: symmetric in b and c
    assert mcnemar(0, 0).p_value == 1.0                # no discordant pairs: no evidence at all
    assert mcnemar(5, 5).p_value == 1.0


def test_mcnemar_chi_square_on_large_table():
    b, c = 30, 15
    test = mcnemar(b, c)
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    assert test.method.startswith("chi-square")
    assert test.statistic == pytest.approx(stat)
    assert test.p_value == pytest.approx(sps.chi2.sf(stat, df=1), rel=1e-9)


def test_identical_results_recover_exactly():
    rng = np.random.default_rng(0)
    correct = rng.random(300) < 0.7
    cmp = compare_task(results(correct), results(correct))
    assert cmp.recovery == 1.0
    assert cmp.recovery_ci == (1.0, 1.0)
    assert cmp.difference_ci == (0.0, 0.0)
    assert cmp.flips_right_to_wrong == cmp.flips_wrong_to_right == 0
    assert cmp.mcnemar.p_value == 1.0
    assert cmp.verdict == WITHIN_NOISE


def test_clearly_degraded_variant():
    n = 500
    base = np.arange(n) < 300                     # 300 right
    var = base.copy()
    var[np.flatnonzero(base)[::10][:30]] = False  # spread-out 30 ...
    var[np.flatnonzero(var)[:60]] = False         # ... plus 60 more: 90 = 30% of the right answers flipped
    cmp = compare_task(results(base), results(var))
    assert cmp.flips_right_to_wrong == 90 and cmp.flips_wrong_to_right == 0
    assert cmp.recovery == pytest.approx(210 / 300)
    assert cmp.recovery_ci[1] < 1.0
    assert cmp.verdict == DEGRADED
    assert cmp.mcnemar.p_value < 1e-10


def test_small_sample_says_interval_is_wide():
    rng = np.random.default_rng(3)
    base, var = correlated_pair(rng, 20)
    cmp = compare_task(results(base), results(var))
    assert any("wide" in note for note in cmp.notes)
    assert any("20 items" in note for note in cmp.notes)


def test_large_clean_sample_has_no_width_warning():
    base = np.arange(2000) % 5 != 0                    # 80% right
    cmp = compare_task(results(base), results(base))
    assert not any("wide" in note for note in cmp.notes)


def test_mismatched_item_ids_are_an_error_naming_the_count():
    base = results([1, 0, 1, 1], ids=["a", "b", "c", "d"])
    var = results([1, 0, 1, 1], ids=["a", "b", "x", "y"])
    with pytest.raises(QuantstudyError, match="2 item.s. only in baseline, 2 only in variant"):
        compare_task(base, var)


def test_pairing_is_by_item_id_not_position():
    base = results([1, 0, 1], ids=["a", "b", "c"])
    var = list(reversed(results([1, 0, 1], ids=["a", "b", "c"])))
    cmp = compare_task(base, var)
    assert cmp.flips_right_to_wrong == cmp.flips_wrong_to_right == 0


def test_duplicate_ids_and_mixed_tasks_are_errors():
    with pytest.raises(QuantstudyError, match="more than once"):
        compare_task(results([1, 1], ids=["a", "a"]), results([1, 1], ids=["a", "b"]))
    with pytest.raises(QuantstudyError, match="mix tasks"):
        compare_task(results([1], task="x"), results([1], task="y"))


def test_zero_or_near_zero_baseline_leaves_recovery_undefined():
    """A 135M model on MATH: 1 of 50 right against 2 of 50 is no '200% recovery'."""
    for base in ([0] * 50, [1] + [0] * 49, [1, 1] + [0] * 48):          # 0%, 2%, 4%: at or below 5%
        cmp = compare_task(results(base), results([0] * 45 + [1] * 5))
        assert cmp.recovery is None and cmp.recovery_ci is None
        assert cmp.difference == pytest.approx(0.1 - sum(base) / 50)
        assert any("near zero" in note and "not meaningful" in note for note in cmp.notes)
    above = compare_task(results([1] * 3 + [0] * 47), results([0] * 45 + [1] * 5))   # 6%: a ratio again
    assert above.recovery == pytest.approx(5 / 3)


def test_aggregate_is_ratio_of_averages_with_equal_task_weight():
    big = results(np.arange(1000) % 10 != 0, task="big")                   # 0.9 both sides
    small_base = np.arange(100) < 30                                       # 0.3
    small_var = np.arange(100) < 15                                        # 0.15
    agg = compare_aggregate({"big": (big, big),
                             "small": (results(small_base, "small"), results(small_var, "small"))})
    ratio_of_averages = (0.9 + 0.15) / (0.9 + 0.3)
    assert agg.recovery == pytest.approx(ratio_of_averages)
    assert agg.recovery != pytest.approx((1.0 + 0.5) / 2)                   # not the average of ratios
    assert agg.recovery_ci[0] <= agg.recovery <= agg.recovery_ci[1]
    assert agg.verdict == DEGRADED
    assert [t.task for t in agg.per_task] == ["big", "small"]


def test_seeded_and_json_serialisable():
    rng = np.random.default_rng(5)
    base, var = correlated_pair(rng, 200)
    a = compare_task(results(base), results(var), seed=11)
    b = compare_task(results(base), results(var), seed=11)
    c = compare_task(results(base), results(var), seed=12)
    assert a == b
    assert a.recovery_ci != c.recovery_ci
    assert json.loads(json.dumps(a.to_dict()))["recovery_ci"] == list(a.recovery_ci)
    agg = compare_aggregate({"t": (results(base), results(var))}, n_bootstrap=200)
    json.dumps(agg.to_dict())
