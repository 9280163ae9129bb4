"""Whether a variant meets a recovery floor, decided only on what the data resolves.

Accuracy first, as a non-inferiority test: a variant *meets* a floor f when the lower bound
of its paired 95% interval of recovery is at or above f (one-sided level 2.5%), is *below*
it when the upper bound is under f, and is *unresolved at this sample size* otherwise. A
point estimate never decides: 103% [94, 113] against a 99% floor is unresolved, not "meets".

Where accuracy is unresolved the decision falls back on the signals that *are* resolved
on few items -- per-token KL divergence and top-1 agreement against the baseline and
perplexity recovery, each with a bootstrap interval over windows. A variant is *close* to
the baseline when every one of them is inside a threshold scaled by the loss the floor
allows (l = 1 - f; at f = 99%: KL <= 0.02 nats, top-1 >= 90%, perplexity recovery >= 97%),
judged on the interval's far end, not the point. These thresholds are stated heuristics,
not fitted: at f = 99% they separate 8-bit from 4-bit variants of the embedded 135M model
(README), and they are checked against the baseline's own noise floor (BF16 served against
the in-process baseline, when the study measured it): a signal whose threshold is less than
twice that floor cannot tell a variant from the baseline and does not count.

Ranking does not reward noise: recovery above 100% ranks as 100% ("no measurable loss").
"""

from __future__ import annotations

from dataclasses import dataclass

# The decisions have one spelling, shared with evaluate's rounds (`sequential`).
from quantstudy.evaluate.sequential import BELOW, MEETS, UNRESOLVED, items_needed  # noqa: F401

# Fidelity thresholds per unit of allowed loss l = 1 - floor (see the module docstring).
KL_PER_LOSS = 2.0          # KL upper bound <= 2 l nats
TOP1_PER_LOSS = 10.0       # top-1 agreement lower bound >= 1 - 10 l
PPL_PER_LOSS = 3.0         # perplexity recovery lower bound >= 1 - 3 l
FLOOR_MARGIN = 2.0         # a threshold must be at least twice the baseline's own noise floor


def accuracy_evidence(ci: tuple[float, float] | None, floor: float) -> str:
    """meets / below / unresolved for a recovery interval against a floor."""
    if ci is None:
        return UNRESOLVED
    if ci[0] >= floor:
        return MEETS
    if ci[1] < floor:
        return BELOW
    return UNRESOLVED


def ranking_recovery(recovery: float | None) -> float:
    """Recovery as ranking sees it: above 100% is 'no measurable loss', not better than BF16."""
    return min(recovery, 1.0) if recovery is not None else 0.0


def items_to_resolve(point: float | None, ci: tuple[float, float] | None, floor: float, n: int | None) -> int | None:
    """Items per task that would resolve an unresolved decision, from the observed spread: the
    interval's half-width shrinks as 1/sqrt(n), so it clears the floor at n (h / |p - f|)^2.
    None where the point sits on the floor (no sample size resolves it) or nothing is known."""
    if point is None or ci is None or not n or abs(point - floor) < 1e-9:
        return None
    return items_needed(point - floor, (ci[1] - ci[0]) / 2, n, z=1.0)   # the half-width is already z x se


@dataclass(frozen=True)
class Fidelity:
    """The resolved signals of one variant (None where the study did not measure it)."""

    kl: float | None = None
    kl_ci: tuple[float, float] | None = None
    top1: float | None = None
    top1_ci: tuple[float, float] | None = None
    ppl_recovery: float | None = None
    ppl_ci: tuple[float, float] | None = None

    def measured(self) -> bool:
        return any(x is not None for x in (self.kl_ci, self.top1_ci, self.ppl_ci))


@dataclass(frozen=True)
class NoiseFloor:
    """The baseline against itself (BF16 served vs in process), where the study measured it."""

    kl: float | None = None
    top1: float | None = None


def thresholds(floor: float) -> dict:
    loss = max(1.0 - floor, 0.0)
    return {"kl_max": KL_PER_LOSS * loss, "top1_min": 1.0 - TOP1_PER_LOSS * loss, "ppl_min": 1.0 - PPL_PER_LOSS * loss}


def fidelity_evidence(f: Fidelity, floor: float, noise: NoiseFloor = NoiseFloor()) -> tuple[str, list[str]]:
    """(meets | below | unresolved, reasons) on the resolved signals alone. *meets*: every
    measured signal inside its threshold at the interval's far end; *below*: one signal
    outside at its near end (resolved, the wrong side); else unresolved."""
    t = thresholds(floor)
    checks = []   # (name, near-end ok, far-end ok, text)
    if f.kl_ci is not None and not (noise.kl is not None and t["kl_max"] < FLOOR_MARGIN * noise.kl):
        checks.append(("KL", f.kl_ci[0] <= t["kl_max"], f.kl_ci[1] <= t["kl_max"],
                       f"KL {f.kl:.3f} [{f.kl_ci[0]:.3f}, {f.kl_ci[1]:.3f}] vs <= {t['kl_max']:.3f}"))
    if f.top1_ci is not None and not (noise.top1 is not None
                                      and 1 - t["top1_min"] < FLOOR_MARGIN * (1 - noise.top1)):
        checks.append(("top-1", f.top1_ci[1] >= t["top1_min"], f.top1_ci[0] >= t["top1_min"],
                       f"top-1 agreement {100 * f.top1:.1f}% [{100 * f.top1_ci[0]:.1f}, {100 * f.top1_ci[1]:.1f}] "
                       f"vs >= {100 * t['top1_min']:.0f}%"))
    if f.ppl_ci is not None:
        checks.append(("ppl", f.ppl_ci[1] >= t["ppl_min"], f.ppl_ci[0] >= t["ppl_min"],
                       f"perplexity recovery {100 * f.ppl_recovery:.1f}% [{100 * f.ppl_ci[0]:.1f}, "
                       f"{100 * f.ppl_ci[1]:.1f}] vs >= {100 * t['ppl_min']:.0f}%"))
    if not checks:
        return UNRESOLVED, ["no resolved fidelity signal (KL, top-1, perplexity) to fall back on"]
    if all(far for _, _, far, _ in checks):
        return MEETS, [text for *_, text in checks]
    failing = [text for _, near, _, text in checks if not near]
    if failing:
        return BELOW, failing
    return UNRESOLVED, [text for _, _, far, text in checks if not far]
