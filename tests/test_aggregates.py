"""Leaderboard aggregates: the v1 average, v2 normalisation, their recovery intervals, the table row."""

import io

import numpy as np
import pytest
from rich.console import Console

from quantstudy.evaluate import leaderboard as lb
from quantstudy.evaluate.report_table import evaluation_table
from quantstudy.evaluate.summary import EvaluationReport, compare
from quantstudy.items import ItemResult
from quantstudy.serial import from_json

N_BOOT = 300   # enough for a percentile interval; keeps the file well under a second per test


def items(task, scores, choices=None):
    extra = (lambda: {"logliks": [0.0] * choices}) if choices else dict
    return [ItemResult(task, str(i), "", s == 1.0, float(s), extra=extra()) for i, s in enumerate(scores)]


def pair(task, n, p_base, p_var, seed, choices=None):
    rng = np.random.default_rng(seed)
    base = (rng.random(n) < p_base).astype(float)
    # the variant keeps most of the baseline's answers: a realistic, strongly paired pair
    var = np.where(rng.random(n) < 0.9, base, (rng.random(n) < p_var).astype(float))
    return items(task, base, choices), items(task, var, choices)


def five_tasks(n=200, seed=0):
    p = {"arc_challenge": 0.5, "hellaswag": 0.6, "mmlu": 0.55, "winogrande": 0.7, "gsm8k": 0.4}
    return {t: pair(t, n, q, q - 0.05, seed + k) for k, (t, q) in enumerate(p.items())}


def test_v1_average_is_the_mean_of_task_scores_and_names_what_is_missing():
    pairs = five_tasks()
    board = lb.leaderboard(pairs, n_bootstrap=N_BOOT)
    means = [np.mean([r.score for r in b]) for b, _ in pairs.values()]
    assert board.v1.baseline_mean == pytest.approx(np.mean(means))
    assert board.v1.variant_mean == pytest.approx(np.mean([np.mean([r.score for r in v]) for _, v in pairs.values()]))
    assert board.v1_missing == ()
    # a non-v1 task counts in v2 but not in v1; a v1 task not run is named
    pairs["humaneval"] = pair("humaneval", 50, 0.3, 0.3, 9)
    del pairs["gsm8k"]
    board = lb.leaderboard(pairs, n_bootstrap=N_BOOT)
    assert board.v1_missing == ("gsm8k",) and "humaneval" in board.normalised
    assert board.v1.baseline_mean == pytest.approx(np.mean(means[:4]))


@pytest.mark.parametrize("task,choices,guess", [("mmlu", None, 0.25), ("winogrande", None, 0.5),
                                                ("hellaswag", None, 0.25), ("arc_challenge", 5, 0.2),
                                                ("gsm8k", None, 0.0), ("ifeval", None, 0.0)])
def test_normalisation_maps_random_guessing_to_0_and_perfect_to_100(task, choices, guess):
    assert lb.random_baseline(items(task, [0.0], choices)[0]) == guess
    perfect = lb.normalise(items(task, [1.0] * 8, choices))
    assert all(r.score == pytest.approx(1.0) for r in perfect)
    # a task at exactly its random accuracy: normalised mean 0
    k = 40
    right = round(k * guess)
    at_chance = lb.normalise(items(task, [1.0] * right + [0.0] * (k - right), choices))
    assert np.mean([r.score for r in at_chance]) == pytest.approx(0.0, abs=1e-12)
    assert [r.correct for r in at_chance] == [True] * right + [False] * (k - right)   # flips unchanged


def test_per_item_choices_decide_the_guess_rate():
    mixed = items("mmlu", [1.0, 0.0], choices=2) + items("mmlu", [0.0], choices=4)
    assert [lb.random_baseline(r) for r in mixed] == [0.5, 0.5, 0.25]


def test_aggregate_interval_contains_the_estimate_and_shrinks_with_more_items():
    widths = []
    for n in (100, 1600):
        board = lb.leaderboard(five_tasks(n), n_bootstrap=N_BOOT)
        for agg in (board.v1, board.v2):
            lo, hi = agg.recovery_ci
            assert lo <= agg.recovery <= hi
        widths.append(board.v2.recovery_ci[1] - board.v2.recovery_ci[0])
    assert widths[1] < 0.5 * widths[0]


def test_near_zero_baseline_gets_no_ratio_only_the_difference():
    # every task at chance: the normalised baseline hovers at 0, a ratio to it would be noise
    rng = np.random.default_rng(3)

    def at_chance(task, right, n=400):   # exactly `right` of n correct; the variant flips 10% of them
        base = rng.permutation([1.0] * right + [0.0] * (n - right))
        var = np.where(rng.random(n) < 0.1, 1.0 - base, base)
        return items(task, base), items(task, var)
    pairs = {"mmlu": at_chance("mmlu", 104), "winogrande": at_chance("winogrande", 200)}
    board = lb.leaderboard(pairs, n_bootstrap=N_BOOT)
    assert 0 < board.v2.baseline_mean < lb.NEAR_ZERO
    assert board.v2.recovery is None and board.v2.recovery_ci is None
    assert board.v2.difference_ci[0] <= board.v2.difference <= board.v2.difference_ci[1]
    assert any("near zero" in n for n in board.v2.notes)
    assert board.v1.recovery is not None   # raw accuracy ~0.37: a ratio is meaningful there


def test_cli_table_and_record_carry_the_aggregate_rows():
    results = {"baseline": {t: b for t, (b, _) in five_tasks(60).items()},
               "w4a16": {t: v for t, (_, v) in five_tasks(60).items()}}
    report = compare(results, ["w4a16"])
    board = report["leaderboard"]["w4a16"]
    assert set(board) >= {"v1", "v2", "v1_missing", "normalised"} and board["v1"]["recovery_ci"]
    table, notes = evaluation_table(report)
    out = io.StringIO()
    Console(file=out, width=240, color_system=None).print(table)
    text = out.getvalue()
    assert "Open LLM v1 avg" in text and "v2 normalised avg" in text
    assert f"{100 * board['v1']['baseline_mean']:.1f}" in text
    # the record reads back, and an older report without the field still does
    assert from_json(EvaluationReport, report).leaderboard["w4a16"].v1.tasks == tuple(lb.V1_TASKS)
    old = {k: v for k, v in report.items() if k != "leaderboard"}
    assert from_json(EvaluationReport, old).leaderboard == {}
    assert "v2 normalised avg" not in _render(evaluation_table(old)[0])


def _render(table) -> str:
    out = io.StringIO()
    Console(file=out, width=240, color_system=None).print(table)
    return out.getvalue()
