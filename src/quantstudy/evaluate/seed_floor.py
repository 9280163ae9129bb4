"""The seed noise floor: how far the baseline moves against itself when only the seeds change.

With K sampled runs per item (reasoning tasks over `--seeds`, code tasks over `--samples`),
the baseline's draws are split into two disjoint halves of its seeds (the first ceil(K/2)
and the rest); the per-item difference of the two halves' means, bootstrapped over items,
gives an interval of what re-running with other seeds does to the baseline. Scaled to what
it would be between two full K-seed runs (a difference of means of k_a and k_b draws has
variance s^2 (1/k_a + 1/k_b), of two K-draw runs s^2 (2/K)), its larger end is the floor: a
variant whose change's interval reaches +-floor is not called degraded or improved (the
served engine's floor -- engines and batch sizes -- works the same way, `runner`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from quantstudy import bootstrap

WITHIN_FLOOR = "within noise floor"


def seed_floor(baseline: Sequence, seed: int = 0) -> dict | None:
    """{'floor', 'difference', 'difference_ci', 'draws', 'items'} for a sampled task, else None."""
    draws = [item.extra.get("draws") for item in baseline]
    if not draws or any(d is None or len(d) != len(draws[0]) for d in draws) or len(draws[0]) < 2:
        return None
    k = len(draws[0])
    ka = math.ceil(k / 2)
    matrix = np.asarray(draws, dtype=float)
    diff = matrix[:, :ka].mean(1) - matrix[:, ka:].mean(1)
    idx = bootstrap.indices(len(diff), bootstrap.N_BOOTSTRAP, seed)
    lo, hi = bootstrap.interval(diff[idx].mean(1))
    scale = math.sqrt((2 / k) / (1 / ka + 1 / (k - ka)))
    return {"floor": float(scale * max(abs(lo), abs(hi))), "difference": float(diff.mean()),
            "difference_ci": [float(lo), float(hi)], "draws": k, "split": [ka, k - ka], "items": len(diff)}


def hold_to_floor(c: dict, task: str, floor: float, whose: str, detail: str = "") -> None:
    """One comparison (JSON) against a noise floor: a degraded or improved verdict whose difference
    interval reaches +-floor becomes 'within noise floor', with a note naming `whose` floor. Shared
    by the seed floor here and the served engine's floor (`runner.apply_noise_floor`)."""
    if c["verdict"] in ("within noise", WITHIN_FLOOR):
        return
    lo, hi = c["difference_ci"]
    if not (hi < -floor or lo > floor):
        c["notes"] = [*c["notes"], f"the interval [{100 * lo:+.1f}, {100 * hi:+.1f}] points reaches {whose} on "
                      f"{task} (±{100 * floor:.1f} points{detail}): not called {c['verdict']}"]
        c["verdict"] = WITHIN_FLOOR


def apply(report: dict) -> None:
    """Verdicts against the seed floor: a change whose interval reaches it is 'within noise floor'."""
    for task, floor in (report.get("seed_floor") or {}).items():
        entry = report["tasks"].get(task)
        if entry is None or entry["metric"] != "accuracy":
            continue
        for c in entry["variants"].values():
            hold_to_floor(c, task, floor["floor"], "the baseline's own seed-to-seed noise floor",
                          f", {floor['draws']} draws")
