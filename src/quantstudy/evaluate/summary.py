"""From per-item results to the evaluate report: per task and variant, the comparison.

Accuracy tasks use the paired statistics of `stats` (recovery, bootstrap interval, flips,
McNemar, verdict). Perplexity is compared as the ratio variant/baseline (lower is better,
so recovery is its inverse) with a paired bootstrap over windows; KL and top-1 agreement
are already pairwise (variant against baseline) and get bootstrap intervals over windows.
"""

from __future__ import annotations

import math

import numpy as np

from quantstudy.evaluate import stats
from quantstudy.evaluate.registry import get_task

N_BOOTSTRAP = 2000


def _boot_indices(n: int, seed: int, n_boot: int = N_BOOTSTRAP) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(values: np.ndarray) -> list[float]:
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]


def perplexity_comparison(base, var, seed: int) -> dict:
    b_ll = np.array([r.loglik for r in base])
    v_ll = np.array([r.loglik for r in var])
    tokens = np.array([r.tokens for r in base], dtype=float)
    idx = _boot_indices(len(base), seed)
    b_ppl = np.exp(-b_ll[idx].sum(1) / tokens[idx].sum(1))
    v_ppl = np.exp(-v_ll[idx].sum(1) / tokens[idx].sum(1))
    base_ppl, var_ppl = math.exp(-b_ll.sum() / tokens.sum()), math.exp(-v_ll.sum() / tokens.sum())
    ratio_ci = _interval(v_ppl / b_ppl)
    verdict = stats.WITHIN_NOISE if ratio_ci[0] <= 1.0 <= ratio_ci[1] else (
        stats.DEGRADED if ratio_ci[0] > 1.0 else stats.IMPROVED)
    return {"n": len(base), "baseline": base_ppl, "variant": var_ppl, "ratio": var_ppl / base_ppl,
            "ratio_ci": ratio_ci, "recovery": base_ppl / var_ppl, "recovery_ci": [1 / ratio_ci[1], 1 / ratio_ci[0]],
            "verdict": verdict}


def divergence_summary(var, seed: int) -> dict:
    kl = np.array([r.extra["kl"] for r in var])
    agree = np.array([r.score for r in var])
    idx = _boot_indices(len(var), seed)
    return {"n": len(var), "kl": float(kl.mean()), "kl_ci": _interval(kl[idx].mean(1)),
            "top1_agreement": float(agree.mean()), "top1_ci": _interval(agree[idx].mean(1))}


def compare(results: dict[str, dict[str, list]], variants: list[str], seed: int = 0) -> dict:
    """results[model][task] -> items (model 'baseline' and each variant name)."""
    tasks: dict[str, dict] = {}
    accuracy_pairs: dict[str, dict] = {name: {} for name in variants}
    for task, base in results["baseline"].items():
        metric = get_task(task).metric
        entry = {"metric": metric, "n": len(base), "variants": {}}
        if metric == "accuracy":
            entry["baseline"] = float(np.mean([r.score for r in base])) if base else None
        elif metric == "perplexity":
            entry["baseline"] = math.exp(-sum(r.loglik for r in base) / sum(r.tokens for r in base))
        for name in variants:
            var = results[name].get(task)
            if var is None:
                continue
            if metric == "accuracy":
                entry["variants"][name] = stats.compare_task(base, var, seed=seed).to_dict()
                accuracy_pairs[name][task] = (base, var)
            else:
                entry["variants"][name] = perplexity_comparison(base, var, seed)
        tasks[task] = entry
    for task in {t for r in results.values() for t in r} - set(tasks):   # KL: variants only
        tasks[task] = {"metric": get_task(task).metric, "variants": {
            name: divergence_summary(results[name][task], seed) for name in variants if task in results[name]}}
    average = {name: stats.compare_aggregate(pairs, seed=seed).to_dict()
               for name, pairs in accuracy_pairs.items() if len(pairs) >= 1}
    return {"tasks": tasks, "average": average}
