"""Evaluate until decided: the accuracy tasks in rounds, each stopped once every variant's
decision against the recovery floor is resolved (`sequential` holds the test).

Round k scores items [0, k x round) of every open task for the baseline and every variant --
the same new items for all, so the comparison stays paired -- through the ordinary evaluate
stage: the store keeps every item, so a round only computes what is new and a rerun of the
whole thing computes nothing. After each round a task's variants are tested with the
group-sequential non-inferiority test; a variant, once decided, stays decided; a task closes
when all its variants are decided, its items run out, or it reaches the budget (`limit`).
Perplexity and KL, resolved on few windows, run once at `limit`.

The report is the evaluate report of the final per-task sample plus `adaptive`: per task the
items it took, and per variant its decision, the items that decided it, and for one still
unresolved the items a fixed design would need at the observed spread.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from quantstudy.evaluate import sequential
from quantstudy.evaluate.registry import get_task
from quantstudy.evaluate.stats import pair_items

DEFAULT_BUDGET = 1000   # items per task (per subject for MMLU) when no limit is given


def evaluate_until_decided(baseline: str, variants: list[str | Path], settings, store_path, progress=None,
                           allow_pickle: bool = False, plan=None) -> dict:
    from quantstudy.evaluate.runner import evaluate_models

    tasks = [t for t in settings.tasks if get_task(t).metric == "accuracy"]
    budget = settings.limit or DEFAULT_BUDGET
    step = min(settings.round_items, budget)
    floor = settings.min_recovery
    limits = {t: step for t in tasks}
    looks: dict[str, tuple[int, ...]] = {t: () for t in tasks}
    decided: dict[str, dict[str, dict]] = {t: {} for t in tasks}
    seen = {t: 0 for t in tasks}        # baseline items at the previous look
    open_tasks = list(tasks)
    while True:
        collected: dict = {}
        round_settings = dataclasses.replace(settings, until_decided=False, limit=budget, task_limits=dict(limits))
        report = evaluate_models(baseline, variants, round_settings, store_path, progress, allow_pickle, plan,
                                 items=collected)
        for task in list(open_tasks):
            looks[task] += (limits[task],)
            n_base = 0
            for name, run in report["primary"].items():
                base_items = collected[f"baseline@{run.split('@')[1]}"][task]
                n_base = len(base_items)
                if name in decided[task]:
                    continue
                _, base, var, _, _ = pair_items(base_items, collected[run][task])
                result = sequential.look([(base, var)], floor, looks[task], budget)
                if result.decision != sequential.UNRESOLVED:
                    decided[task][name] = {"decision": result.decision, "items": len(base),
                                           "round": len(looks[task]), "margin": result.margin, "se": result.se}
            exhausted = limits[task] >= budget or n_base <= seen[task]   # no new items: the task ran out
            seen[task] = n_base
            if len(decided[task]) == len(report["primary"]) or exhausted:
                open_tasks.remove(task)
                _close(task, decided[task], report, collected, floor, looks[task], budget)
            else:
                limits[task] = min(limits[task] + step, budget)
        if not open_tasks:
            break
    report["adaptive"] = {
        "floor": floor, "budget": budget, "round": step, "alpha": sequential.ADAPTIVE_ALPHA,
        "tasks": {t: {"limit": limits[t], "rounds": len(looks[t]), "variants": decided[t]} for t in tasks}}
    report["settings"] = {**report["settings"], "until_decided": True, "task_limits": dict(limits)}
    return report


def _close(task: str, decided: dict, report: dict, collected: dict, floor: float, looks: tuple[int, ...],
           budget: int) -> None:
    """Unresolved variants of a closed task: their state at the last look, and the items per
    task at which the margin seen would clear this design's last critical value."""
    fractions = tuple(min(m / budget, 1.0) for m in looks)
    z = sequential.boundaries(fractions, sequential.ADAPTIVE_ALPHA)[-1] if all(
        b > a for a, b in zip(fractions, fractions[1:])) else None
    for name, run in report["primary"].items():
        if name in decided:
            continue
        _, base, var, _, _ = pair_items(collected[f"baseline@{run.split('@')[1]}"][task], collected[run][task])
        margin, se, _ = sequential.margin_stats([(base, var)], floor)
        decided[name] = {"decision": sequential.UNRESOLVED, "items": len(base), "round": len(looks),
                         "margin": margin, "se": se, "items_needed": sequential.items_needed(margin, se, len(base), z)}
