"""Typed records of the evaluate stage: per-item results (`quantstudy.items.ItemResult`, kept
by the store) and the comparisons the stage computes from them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PerplexityComparison:
    """Variant / baseline perplexity with a paired bootstrap over windows (lower is better)."""

    n: int
    baseline: float
    variant: float
    ratio: float
    ratio_ci: tuple[float, float]
    recovery: float              # baseline / variant: above 1 is better, like accuracy recovery
    recovery_ci: tuple[float, float]
    verdict: str


@dataclass(frozen=True)
class DivergenceSummary:
    """KL(baseline || variant) and top-1 agreement per window, with bootstrap intervals."""

    n: int
    kl: float
    kl_ci: tuple[float, float]
    top1_agreement: float
    top1_ci: tuple[float, float]
