"""Leaderboard-style aggregates of an evaluation's accuracy tasks, as the paper reports them.

- Open LLM Leaderboard v1: the plain mean of the v1 task scores we can run offline
  (ARC-Challenge, HellaSwag, MMLU, Winogrande, GSM8K; TruthfulQA's data is not packaged).
- v2 style: each task's score rescaled so random guessing is 0 and perfect is 100,
  (s - r) / (1 - r), then averaged. Without it a 4-choice task's 25% floor and a 2-choice
  task's 50% weigh into the mean as if they were skill. r is taken per item from its number
  of choices where the item carries it (`extra["logliks"]`, one per choice), else the task's
  table value, else 0 (generation: guessing scores nothing). The rescaling is linear per item,
  so normalising items and averaging is the task-level formula exactly when r is constant.

Recovery of each aggregate (variant / baseline) and its interval come from
`stats.compare_aggregate`: the same paired bootstrap over items as the paper's average row.
A normalised baseline near zero (a model at chance) gets no ratio, only the difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from quantstudy.evaluate import stats
from quantstudy.evaluate.stats import AggregateComparison
from quantstudy.items import ItemResult

V1_TASKS = ("arc_challenge", "hellaswag", "mmlu", "winogrande", "gsm8k")
# Random-guess accuracy where an item does not say how many choices it had.
RANDOM_BASELINE = {"arc_challenge": 0.25, "mmlu": 0.25, "hellaswag": 0.25, "winogrande": 0.5,
                   "mmlu_cot": 0.25}   # a chain that ends on a random letter
# A normalised baseline average below 2 points of 100 is a model at chance: variant / baseline
# would divide by sampling noise (and flip sign below chance), so no recovery is printed.
NEAR_ZERO = 0.02


@dataclass(frozen=True)
class Leaderboard:
    """One variant's leaderboard aggregates; every field optional so older records still load."""

    v1: AggregateComparison | None = None         # None when none of the v1 tasks ran
    v1_missing: tuple[str, ...] = ()              # v1 tasks this evaluation did not run
    v2: AggregateComparison | None = None         # mean of normalised task scores (fractions: 1 = 100)
    normalised: dict[str, tuple[float, float]] = field(default_factory=dict)   # task -> (baseline, variant)


def random_baseline(result: ItemResult) -> float:
    """The item's random-guess score: 1 / its number of choices, else the task's, else 0."""
    choices = result.extra.get("logliks") if result.extra else None
    if choices:
        return 1.0 / len(choices)
    return RANDOM_BASELINE.get(result.task, 0.0)


def normalise(results: Sequence[ItemResult]) -> list[ItemResult]:
    """Items with score (s - r) / (1 - r); sampled draws are rescaled alike so the two-level
    bootstrap still resamples them. `correct` is untouched (flips do not change)."""
    out = []
    for r in results:
        g = random_baseline(r)
        if g == 0:
            out.append(r)
            continue
        extra = r.extra
        if extra and extra.get("draws") is not None:
            extra = {**extra, "draws": [(d - g) / (1 - g) for d in extra["draws"]]}
        out.append(replace(r, score=(r.score - g) / (1 - g), extra=extra))
    return out


def leaderboard(pairs: Mapping[str, tuple[Sequence[ItemResult], Sequence[ItemResult]]], *,
                seed: int = 0, n_bootstrap: int = 2000) -> Leaderboard | None:
    """`pairs`: accuracy task -> (baseline items, variant items), as `summary.compare` collects them."""
    if not pairs:
        return None
    v1_pairs = {t: pairs[t] for t in V1_TASKS if t in pairs}
    v1 = (stats.compare_aggregate(v1_pairs, seed=seed, n_bootstrap=n_bootstrap, per_task_detail=False,
                                  min_baseline=NEAR_ZERO) if v1_pairs else None)
    norm = {t: (normalise(b), normalise(v)) for t, (b, v) in pairs.items()}
    v2 = stats.compare_aggregate(norm, seed=seed, n_bootstrap=n_bootstrap, per_task_detail=False,
                                 min_baseline=NEAR_ZERO)
    means = {t: (_mean(b), _mean(v)) for t, (b, v) in norm.items()}
    return Leaderboard(v1, tuple(t for t in V1_TASKS if t not in pairs), v2, means)


def _mean(results: Sequence[ItemResult]) -> float:
    return sum(r.score for r in results) / len(results)
