"""Paired statistics for baseline-vs-variant accuracy: recovery, bootstrap intervals, McNemar.

The paper reports *recovery* = variant score / baseline score. A single recovery number on a
few hundred items says little on its own: a 1-point drop on 500 items is well inside
sampling noise. Because both models answer the *same* items, the two scores are strongly
correlated, so we resample items jointly (a paired bootstrap) rather than each model on its
own; that keeps the shared item difficulty in both numerator and denominator and gives a far
tighter, honest interval. McNemar's test looks only at the items where the models disagree.

Sampled runs (`sampling`: N samples or K seeds per item, `extra["draws"]`) have a second
source of noise, the draws themselves; there the bootstrap is two-level -- items, then each
drawn item's draws -- so the interval covers a rerun with other seeds, not only other items.
The item level already carries part of that seed noise (an item's mean over K draws varies), so
resampling both levels counts it a little twice: slightly conservative, the side to err on
before calling a variant degraded.

Everything is seeded (numpy Generator) so a report can be regenerated bit for bit. The
resampling itself is `quantstudy.bootstrap`, the one paired bootstrap every stage uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from quantstudy import bootstrap
from quantstudy.errors import QuantstudyError
from quantstudy.items import ItemResult

WITHIN_NOISE = "within noise"
DEGRADED = "degraded"
IMPROVED = "improved"

# Below this many discordant pairs the chi-square approximation is poor; use the exact test.
EXACT_MCNEMAR_BELOW = 25
# An interval wider than this (in recovery units, i.e. 10 points of recovery) cannot tell a
# lossless quantization from a noticeably lossy one; say so instead of printing a verdict alone.
WIDE_INTERVAL = 0.10
NEAR_ZERO = 0.05      # task baseline accuracy at or below this: no recovery ratio (a ratio of near-zeros)
SMALL_N = 100
ALPHA = 0.05


@dataclass(frozen=True)
class McNemar:
    b: int              # baseline right, variant wrong
    c: int              # baseline wrong, variant right
    p_value: float
    method: str         # "exact binomial" or "chi-square with continuity correction"
    statistic: float | None = None   # chi-square statistic; None for the exact test


@dataclass(frozen=True)
class TaskComparison:
    task: str
    n: int
    baseline_mean: float
    variant_mean: float
    recovery: float | None                       # None when the baseline mean is 0
    recovery_ci: tuple[float, float] | None
    difference: float                            # variant - baseline
    difference_ci: tuple[float, float]
    flips_right_to_wrong: int
    flips_wrong_to_right: int
    mcnemar: McNemar
    verdict: str
    notes: tuple[str, ...]
    confidence: float
    n_bootstrap: int
    seed: int

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class AggregateComparison:
    """The paper's average row: recovery of the average, not the average of recoveries."""

    tasks: tuple[str, ...]
    baseline_mean: float      # mean over tasks of per-task baseline means
    variant_mean: float
    recovery: float | None
    recovery_ci: tuple[float, float] | None
    difference: float
    difference_ci: tuple[float, float]
    verdict: str
    notes: tuple[str, ...]
    per_task: tuple[TaskComparison, ...]
    confidence: float
    n_bootstrap: int
    seed: int

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


def mcnemar(b: int, c: int) -> McNemar:
    """McNemar's test on the discordant pairs: b = right->wrong, c = wrong->right.

    Under H0 (same accuracy) each discordant pair is equally likely to go either way, so
    b ~ Binomial(b + c, 1/2). Exact two-sided p for few pairs; chi-square with Yates'
    continuity correction otherwise (the textbook large-sample form).
    """
    if b < 0 or c < 0:
        raise QuantstudyError(f"McNemar counts must be non-negative, got b={b}, c={c}")
    m = b + c
    if m < EXACT_MCNEMAR_BELOW:
        tail = sum(math.comb(m, k) for k in range(min(b, c) + 1)) / 2 ** m
        return McNemar(b, c, min(1.0, 2.0 * tail), "exact binomial")
    stat = (abs(b - c) - 1) ** 2 / m
    # chi-square with 1 dof: P(X > s) = P(|Z| > sqrt(s)) = erfc(sqrt(s / 2)).
    return McNemar(b, c, math.erfc(math.sqrt(stat / 2.0)), "chi-square with continuity correction", stat)


def compare_task(baseline: Sequence[ItemResult], variant: Sequence[ItemResult], *, n_bootstrap: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> TaskComparison:
    """Compare a variant to the baseline on one task, items paired by `item_id`."""
    task, base, var, base_ok, var_ok = pair_items(baseline, variant)
    _check_settings(n_bootstrap, confidence)
    rng = np.random.default_rng(seed)
    draws = pair_draws(baseline, variant)
    boot_base, boot_var = _bootstrap_means([(base, var)], n_bootstrap, rng, [draws], _inner_rng(seed))
    b = int(np.sum(base_ok & ~var_ok))
    c = int(np.sum(~base_ok & var_ok))
    test = mcnemar(b, c)
    # A baseline near zero (a 135M model on MATH or GSM8K) makes variant / baseline a ratio of
    # two near-zeros: no recovery then, the verdict from the difference (and the report says so).
    est = _estimate(float(base.mean()), float(var.mean()), boot_base, boot_var, confidence, min_baseline=NEAR_ZERO)
    notes = list(est.notes)
    notes += _width_notes(est, len(base))
    if draws is not None:
        notes.append(f"{draws[0].shape[1]} sampled draws per item: the interval resamples items and each item's "
                     "draws (two-level bootstrap)")
    if test.p_value < ALPHA and est.verdict == WITHIN_NOISE:
        notes.append(f"McNemar finds the flips unbalanced (p={test.p_value:.3g}, {test.method}) "
                     "although the recovery interval contains 1: borderline, collect more items")
    elif test.p_value >= ALPHA and est.verdict != WITHIN_NOISE:
        notes.append(f"McNemar is not significant (p={test.p_value:.3g}, {test.method}) although the "
                     "recovery interval excludes 1: borderline")
    return TaskComparison(
        task=task, n=len(base), baseline_mean=est.baseline_mean, variant_mean=est.variant_mean,
        recovery=est.recovery, recovery_ci=est.recovery_ci, difference=est.difference,
        difference_ci=est.difference_ci, flips_right_to_wrong=b, flips_wrong_to_right=c, mcnemar=test,
        verdict=est.verdict, notes=tuple(notes), confidence=confidence, n_bootstrap=n_bootstrap, seed=seed)


def compare_aggregate(per_task: Mapping[str, tuple[Sequence[ItemResult], Sequence[ItemResult]]], *,
                      n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0,
                      per_task_detail: bool = True, min_baseline: float = 0.0) -> AggregateComparison:
    """Recovery of the task average: mean(variant task means) / mean(baseline task means).

    Each task counts once whatever its size (as in the paper's average row). The bootstrap
    resamples items within each task, jointly for both models, and recomputes the ratio of
    averages, so the interval reflects every task's own sampling noise.

    `per_task_detail=False` skips the per-task comparisons (a second aggregate over tasks
    already compared one by one need not redo them). A baseline average at or below
    `min_baseline` gets no ratio, as a zero one never does: leaderboard-normalised scores
    sit near 0 (or below) for a model at chance, where variant / baseline is noise.
    """
    if not per_task:
        raise QuantstudyError("no tasks to aggregate")
    _check_settings(n_bootstrap, confidence)
    names = tuple(per_task)
    comparisons, arrays, draws = [], [], []
    for name in names:
        baseline, variant = per_task[name]
        if per_task_detail:
            comparisons.append(compare_task(baseline, variant, n_bootstrap=n_bootstrap, confidence=confidence,
                                            seed=seed))
        _, base, var, _, _ = pair_items(baseline, variant)
        arrays.append((base, var))
        draws.append(pair_draws(baseline, variant))
    rng = np.random.default_rng(seed)
    boot_base, boot_var = _bootstrap_means(arrays, n_bootstrap, rng, draws, _inner_rng(seed))
    base_mean = float(np.mean([b.mean() for b, _ in arrays]))
    var_mean = float(np.mean([v.mean() for _, v in arrays]))
    est = _estimate(base_mean, var_mean, boot_base, boot_var, confidence, min_baseline)
    notes = list(est.notes) + _width_notes(est, min(len(b) for b, _ in arrays))
    return AggregateComparison(
        tasks=names, baseline_mean=est.baseline_mean, variant_mean=est.variant_mean, recovery=est.recovery,
        recovery_ci=est.recovery_ci, difference=est.difference, difference_ci=est.difference_ci,
        verdict=est.verdict, notes=tuple(notes), per_task=tuple(comparisons), confidence=confidence,
        n_bootstrap=n_bootstrap, seed=seed)


# --- internals -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Estimate:
    baseline_mean: float
    variant_mean: float
    recovery: float | None
    recovery_ci: tuple[float, float] | None
    difference: float
    difference_ci: tuple[float, float]
    verdict: str
    notes: tuple[str, ...]


def _estimate(base_mean: float, var_mean: float, boot_base: np.ndarray, boot_var: np.ndarray,
              confidence: float, min_baseline: float = 0.0) -> _Estimate:
    """Point estimates, percentile intervals and the verdict from bootstrap replicate means."""
    diff_ci = bootstrap.interval(boot_var - boot_base, confidence)
    notes: list[str] = []
    if base_mean <= min_baseline:
        # A ratio to zero (or near it) is meaningless; fall back on the difference so a verdict still exists.
        notes.append("baseline mean is 0: recovery is undefined; the verdict uses the difference interval"
                     if min_baseline == 0 else
                     f"baseline mean is {100 * base_mean:.1f} (at or below {100 * min_baseline:g}, near zero): "
                     "recovery is not meaningful; the verdict uses the difference interval")
        return _Estimate(base_mean, var_mean, None, None, var_mean - base_mean, diff_ci,
                         _verdict(diff_ci, 0.0), tuple(notes))
    ok = boot_base > 0
    if not ok.all():
        # Only happens with very low baseline accuracy on few items; those replicates have no ratio.
        notes.append(f"{int((~ok).sum())} of {len(ok)} bootstrap resamples had a baseline mean of 0 and "
                     "were left out of the recovery interval")
    rec_ci = bootstrap.interval(boot_var[ok] / boot_base[ok], confidence)
    return _Estimate(base_mean, var_mean, var_mean / base_mean, rec_ci, var_mean - base_mean, diff_ci,
                     _verdict(rec_ci, 1.0), tuple(notes))


def _verdict(ci: tuple[float, float], null: float) -> str:
    if ci[1] < null:
        return DEGRADED
    if ci[0] > null:
        return IMPROVED
    return WITHIN_NOISE


def _width_notes(est: _Estimate, n: int) -> list[str]:
    notes = []
    ci = est.recovery_ci if est.recovery_ci is not None else est.difference_ci
    width = ci[1] - ci[0]
    if width > WIDE_INTERVAL:
        notes.append(f"interval is wide ({ci[0]:.3f} to {ci[1]:.3f}, width {width:.3f} > {WIDE_INTERVAL}): "
                     "these items cannot resolve small accuracy changes")
    if n < SMALL_N:
        notes.append(f"only {n} items (< {SMALL_N}): the interval is wide and itself uncertain; "
                     "treat the verdict as indicative")
    return notes


def _bootstrap_means(tasks: list[tuple[np.ndarray, np.ndarray]], n_bootstrap: int, rng: np.random.Generator,
                     draws: list | None = None, inner_rng: np.random.Generator | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Replicate means of (mean over tasks of) baseline and variant scores.

    Each replicate draws n item indices with replacement per task and applies the *same*
    indices to both models: that is what makes the bootstrap paired. A task with per-item
    draws (`draws[t]`, from `pair_draws`) also resamples each item's draws (`inner_rng`),
    the same draw indices for both models.
    """
    base_out = np.zeros(n_bootstrap)
    var_out = np.zeros(n_bootstrap)
    for t, (base, var) in enumerate(tasks):
        pair = draws[t] if draws else None
        if pair is not None:
            reps = bootstrap.nested_means(pair, n_bootstrap, rng, inner_rng)
        else:
            reps = bootstrap.replicates(lambda idx: np.stack([base[idx].mean(axis=1), var[idx].mean(axis=1)],
                                                             axis=1), len(base), n_bootstrap, rng)
        base_out += reps[:, 0]
        var_out += reps[:, 1]
    return base_out / len(tasks), var_out / len(tasks)


def pair_items(baseline: Sequence[ItemResult], variant: Sequence[ItemResult]):
    """Align both result lists by item_id; refuse anything that does not pair one-to-one.
    Returns (task, baseline scores, variant scores, baseline correct, variant correct)."""
    if not baseline or not variant:
        raise QuantstudyError(f"nothing to compare: baseline has {len(baseline)} results, "
                              f"variant has {len(variant)}")
    tasks = {r.task for r in baseline} | {r.task for r in variant}
    if len(tasks) != 1:
        raise QuantstudyError(f"results mix tasks {sorted(tasks)}; compare one task at a time")
    base_by_id = _by_id(baseline, "baseline")
    var_by_id = _by_id(variant, "variant")
    only_base = base_by_id.keys() - var_by_id.keys()
    only_var = var_by_id.keys() - base_by_id.keys()
    if only_base or only_var:
        example = sorted(only_base | only_var)[0]
        raise QuantstudyError(
            f"task {next(iter(tasks))}: results do not pair up by item_id: {len(only_base)} item(s) only in "
            f"baseline, {len(only_var)} only in variant (e.g. {example!r})")
    ids = sorted(base_by_id)
    base = np.array([base_by_id[i].score for i in ids], dtype=np.float64)
    var = np.array([var_by_id[i].score for i in ids], dtype=np.float64)
    if not (np.isfinite(base).all() and np.isfinite(var).all()):
        raise QuantstudyError(f"task {next(iter(tasks))}: scores must be finite numbers")
    base_ok = np.array([base_by_id[i].correct for i in ids], dtype=bool)
    var_ok = np.array([var_by_id[i].correct for i in ids], dtype=bool)
    return next(iter(tasks)), base, var, base_ok, var_ok


def pair_draws(baseline: Sequence[ItemResult], variant: Sequence[ItemResult]):
    """Each item's per-draw scores (`extra["draws"]`, sampled runs) as (n, k) arrays for
    baseline and variant, items in `pair_items`' order; None -- the one-level bootstrap -- unless
    every item on both sides has the same number k > 1 of draws (a greedy run has none)."""
    base_by_id, var_by_id = _by_id(baseline, "baseline"), _by_id(variant, "variant")
    ids = sorted(base_by_id)
    rows = [(base_by_id[i].extra.get("draws"), var_by_id[i].extra.get("draws")) for i in ids if i in var_by_id]
    if len(rows) != len(ids) or not rows or any(b is None or v is None for b, v in rows):
        return None
    k = len(rows[0][0])
    if k < 2 or any(len(b) != k or len(v) != k for b, v in rows):
        return None
    return np.array([b for b, _ in rows], dtype=np.float64), np.array([v for _, v in rows], dtype=np.float64)


def _inner_rng(seed: int) -> np.random.Generator:
    # a stream of its own for the draw level, so the item level draws the indices it always did
    return np.random.default_rng((seed, 1))


def _by_id(results: Sequence[ItemResult], side: str) -> dict[str, ItemResult]:
    out: dict[str, ItemResult] = {}
    for r in results:
        if r.item_id in out:
            raise QuantstudyError(f"{side} has item_id {r.item_id!r} more than once (task {r.task})")
        out[r.item_id] = r
    return out


def _check_settings(n_bootstrap: int, confidence: float) -> None:
    bootstrap.check(1, n_bootstrap, confidence)


def _jsonable(value):
    """asdict leaves tuples; JSON wants lists (and floats, not numpy scalars)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
