"""From per-item results to the evaluate report: per task and variant, the comparison.

Accuracy tasks use the paired statistics of `stats` (recovery, bootstrap interval, flips,
McNemar, verdict). Perplexity is compared as the ratio variant/baseline (lower is better,
so recovery is its inverse) with a paired bootstrap over windows; KL and top-1 agreement
are already pairwise (variant against baseline) and get bootstrap intervals over windows.

`compare` returns the report as JSON (what the CLI writes and the store keeps); its record
type is `EvaluationReport`, which the study reads it back into.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from quantstudy import bootstrap
from quantstudy.evaluate import cot, stats
from quantstudy.evaluate.leaderboard import Leaderboard, leaderboard
from quantstudy.evaluate.records import DivergenceSummary, PerplexityComparison
from quantstudy.evaluate.registry import get_task
from quantstudy.evaluate.seed_floor import apply as apply_seed_floor
from quantstudy.evaluate.seed_floor import seed_floor
from quantstudy.evaluate.stats import AggregateComparison, TaskComparison
from quantstudy.serial import to_json


@dataclass(frozen=True)
class TaskEntry:
    """One task: its metric, size, baseline score (None for divergence, which has no
    baseline of its own) and each variant's comparison."""

    metric: str                  # accuracy | perplexity | divergence
    variants: dict[str, TaskComparison | PerplexityComparison | DivergenceSummary]
    n: int | None = None
    baseline: float | None = None
    baselines: dict[str, float | None] = field(default_factory=dict)   # per engine where several ran
    cot: dict[str, dict] = field(default_factory=dict)   # model -> chain-of-thought diagnostics (`cot`)


@dataclass(frozen=True)
class EvaluationReport:
    tasks: dict[str, TaskEntry]
    average: dict[str, AggregateComparison] = field(default_factory=dict)
    models: dict = field(default_factory=dict)      # name -> {ref, key (its store identity), scheme}
    settings: dict = field(default_factory=dict)
    engines: dict = field(default_factory=dict)     # run ("name@vllm", "name@hf") -> what ran it
    primary: dict = field(default_factory=dict)     # variant -> the run its comparison uses
    served: dict = field(default_factory=dict)      # served vs emulated, noise floor (served_runs.report)
    not_served: dict = field(default_factory=dict)  # name -> why it was evaluated in process
    adaptive: dict = field(default_factory=dict)    # evaluated until decided: items per decision (`adaptive`)
    leaderboard: dict[str, Leaderboard] = field(default_factory=dict)   # variant -> v1 average, v2 normalised
    seed_floor: dict = field(default_factory=dict)   # sampled task -> the baseline against itself (`seed_floor`)

    def engine_of(self, variant: str) -> str:
        """'vllm' or 'hf': the engine behind a variant's comparison."""
        return self.primary.get(variant, f"{variant}@hf").split("@")[1]

    def floor(self, task: str) -> float | None:
        """The served engine's noise floor on a task (|accuracy difference| without quantization)."""
        return (self.served.get("floor") or {}).get(task)


def _interval(values: np.ndarray) -> list[float]:
    return list(bootstrap.interval(values))


def perplexity_comparison(base, var, seed: int) -> PerplexityComparison:
    b_ll = np.array([r.loglik for r in base])
    v_ll = np.array([r.loglik for r in var])
    tokens = np.array([r.tokens for r in base], dtype=float)
    idx = bootstrap.indices(len(base), bootstrap.N_BOOTSTRAP, seed)
    b_ppl = np.exp(-b_ll[idx].sum(1) / tokens[idx].sum(1))
    v_ppl = np.exp(-v_ll[idx].sum(1) / tokens[idx].sum(1))
    base_ppl, var_ppl = math.exp(-b_ll.sum() / tokens.sum()), math.exp(-v_ll.sum() / tokens.sum())
    ratio_ci = _interval(v_ppl / b_ppl)
    verdict = stats.WITHIN_NOISE if ratio_ci[0] <= 1.0 <= ratio_ci[1] else (
        stats.DEGRADED if ratio_ci[0] > 1.0 else stats.IMPROVED)
    return PerplexityComparison(len(base), base_ppl, var_ppl, var_ppl / base_ppl, tuple(ratio_ci), base_ppl / var_ppl,
                                (1 / ratio_ci[1], 1 / ratio_ci[0]), verdict)


def divergence_summary(var, seed: int) -> DivergenceSummary:
    kl = np.array([r.extra["kl"] for r in var])
    agree = np.array([r.score for r in var])
    idx = bootstrap.indices(len(var), bootstrap.N_BOOTSTRAP, seed)
    return DivergenceSummary(len(var), float(kl.mean()), tuple(_interval(kl[idx].mean(1))), float(agree.mean()),
                             tuple(_interval(agree[idx].mean(1))))


def compare(results: dict[str, dict[str, list]], variants: list[str], seed: int = 0) -> dict:
    """results[model][task] -> items (model 'baseline' and each variant name); the report as JSON."""
    tasks: dict[str, TaskEntry] = {}
    accuracy_pairs: dict[str, dict] = {name: {} for name in variants}
    for task, base in results["baseline"].items():
        metric = get_task(task).metric
        baseline, comparisons = None, {}
        if metric == "accuracy":
            baseline = float(np.mean([r.score for r in base])) if base else None
        elif metric == "perplexity":
            baseline = math.exp(-sum(r.loglik for r in base) / sum(r.tokens for r in base))
        for name in variants:
            var = results[name].get(task)
            if var is None:
                continue
            if metric == "accuracy":
                comparisons[name] = stats.compare_task(base, var, seed=seed)
                accuracy_pairs[name][task] = (base, var)
            else:
                comparisons[name] = perplexity_comparison(base, var, seed)
        chains = {name: cot.summarize(items) for name, items in
                  [("baseline", base), *((n, results[n][task]) for n in variants if task in results[n])]}
        tasks[task] = TaskEntry(metric, comparisons, len(base), baseline,
                                cot={k: v for k, v in chains.items() if v is not None})
    for task in {t for r in results.values() for t in r} - set(tasks):   # KL: variants only
        comparisons = {name: divergence_summary(results[name][task], seed) for name in variants
                       if task in results[name]}
        n = next(iter(comparisons.values())).n if comparisons else 0
        tasks[task] = TaskEntry(get_task(task).metric, comparisons, n)
    average = {name: stats.compare_aggregate(pairs, seed=seed)
               for name, pairs in accuracy_pairs.items() if len(pairs) >= 1}
    boards = {name: leaderboard(pairs, seed=seed) for name, pairs in accuracy_pairs.items() if pairs}
    floors = {task: f for task, base in results["baseline"].items()
              if get_task(task).metric == "accuracy" and (f := seed_floor(base, seed)) is not None}
    report = to_json(EvaluationReport(tasks, average, leaderboard=boards, seed_floor=floors))
    apply_seed_floor(report)
    return report


def compare_engines(results: dict[str, dict[str, list]], primary: dict[str, str], seed: int = 0) -> dict:
    """`compare` per engine: each variant against the baseline run on its own engine
    (results keyed 'name@engine'; `primary` maps a variant to its run), merged into one
    report whose tasks keep every engine's baseline score."""
    by_engine: dict[str, list[str]] = {}
    for variant, run in primary.items():
        by_engine.setdefault(run.split("@")[1], []).append(variant)
    if not by_engine:
        engine = "vllm" if "baseline@vllm" in results else "hf"
        by_engine = {engine: []}
    merged: dict | None = None
    for engine in sorted(by_engine, key=lambda e: e != "vllm"):   # served first: its baseline heads the table
        variants = by_engine[engine]
        part = compare({"baseline": results[f"baseline@{engine}"], **{v: results[primary[v]] for v in variants}},
                       variants, seed=seed)
        for entry in part["tasks"].values():
            entry["baselines"] = {engine: entry["baseline"]}
        if merged is None:
            merged = part
            continue
        for task, entry in part["tasks"].items():
            into = merged["tasks"].setdefault(task, entry)
            if into is not entry:
                into["variants"].update(entry["variants"])
                into["baselines"][engine] = entry["baseline"]
                for model, chains in entry.get("cot", {}).items():   # the served baseline's chains first
                    into.setdefault("cot", {}).setdefault(model, chains)
        merged["average"].update(part["average"])
        merged["leaderboard"].update(part["leaderboard"])
        for task, floor in part.get("seed_floor", {}).items():   # the served baseline's floor first
            merged.setdefault("seed_floor", {}).setdefault(task, floor)
    return merged
