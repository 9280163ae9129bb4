"""Each candidate against the deployment's constraints: feasible or not, and why.

Candidates are the BF16 baseline and every variant. Each gets an accuracy figure (the
evaluate stage's recovery of the task average, with its paired-bootstrap interval) and a
cost figure for the deployment (`costs`). A recovery constraint is met only where the
evidence supports it (`decision`): the interval's lower bound at or above the floor, or --
where accuracy is unresolved at the study's sample size -- the resolved fidelity signals
close to the baseline. A point estimate alone never meets or fails a floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quantstudy.bench.records import PredictedRow
from quantstudy.compare.verdict import PARAPHRASE_STS, paper_observation
from quantstudy.recommend.costs import measured_cost, predicted_cost, support_status
from quantstudy.recommend.decision import (BELOW, MEETS, UNRESOLVED, Fidelity, NoiseFloor, accuracy_evidence,
                                           fidelity_evidence, items_to_resolve, ranking_recovery)
from quantstudy.results import BASELINE, StudyResults

# Relative difference under which two queries/$ figures count as a tie (FP8 and INT8 share
# one roofline on Hopper, so exact ties are common in predictions).
TIE = 1e-6


@dataclass(frozen=True)
class Candidate:
    name: str                       # 'baseline' or the variant name
    fmt: str
    label: str
    recovery: float | None
    recovery_ci: tuple[float, float] | None
    verdict: str
    groups: dict                    # group -> {"recovery", "ci"} for the groups asked about
    status: str                     # preflight on the deployment hardware: native|fallback|refused|unknown
    queries_per_usd: float | None   # sync or async per the deployment mode
    source: str | None              # 'measured' | 'predicted' | None
    latency_s: float | None         # per query, synchronous (mean measured or predicted)
    requests_per_s: float | None    # the throughput behind the async figure
    gpus: int | None
    usd_per_hour: float | None      # all GPUs of this deployment
    feasible: bool
    reasons: tuple[str, ...]        # why not feasible, one per violated constraint
    warnings: tuple[str, ...]       # feasible but worth knowing (fallback kernel, decided on fidelity)
    on_front: bool = False
    evidence: dict = field(default_factory=dict)   # group -> meets | below | unresolved (accuracy alone)
    decided_by: str = ""            # accuracy | fidelity | "" (the floor is not met)
    fidelity: dict = field(default_factory=dict)   # the resolved signals: kl, top1, ppl_recovery (+ _ci)
    items: int | None = None        # items per task behind the accuracy figure
    items_to_resolve: dict = field(default_factory=dict)   # unresolved group -> items per task that would resolve it


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def candidate(name: str, fmt: str, label: str, results: StudyResults, dep: dict, hw: str,
              predicted: list[PredictedRow]) -> Candidate:
    rows = [r for r in predicted if r.fmt == fmt and r.hardware == hw and r.use_case == dep["use_case"]]
    row = rows[0] if rows else None
    status, status_note = support_status(fmt, hw, row)
    rec, ci, verdict = results.accuracy_of(name)
    reasons, warnings = [], []
    cost = None
    if status == "refused":
        reasons.append(f"refused on {hw}: {status_note}")
    else:
        cost = measured_cost(fmt, dep, hw, results, predicted) or predicted_cost(row, dep["mode"])
        if cost is None:
            reasons.append(f"no cost figure for {fmt} on {hw} / {dep['use_case']}"
                           + (f" ({row.note})" if row and row.note else ""))
        if status == "fallback":
            warnings.append(f"runs through a fallback kernel on {hw}: {status_note}")
    slo, budget = dep["latency_slo_s"], dep["budget_usd_per_hour"]
    if cost and slo is not None:
        if cost.slo_unmet:
            reasons.append(f"no measured load level keeps p90 latency within the {slo:g} s SLO")
        elif cost.slo_latency_s is not None and cost.slo_latency_s > slo:
            what = "p90 latency" if cost.source == "measured" else "latency of a lone request"
            reasons.append(f"{what} {cost.slo_latency_s:.2f} s > SLO {slo:g} s ({cost.source})")
        elif dep["mode"] == "async" and cost.source == "predicted":
            warnings.append("latency under load is not predicted; only a lone request's was checked against the SLO")
    if cost and budget is not None and cost.usd_per_hour > budget:
        reasons.append(f"${cost.usd_per_hour:.2f}/h on {cost.gpus} GPU(s) > budget ${budget:g}/h")
    groups, evidence, to_resolve = {}, {}, {}
    items = _items(name, results)
    fid = results.fidelity_of(name) if name != BASELINE else {}
    unresolved = []
    for group, bar in dep["min_recovery"].items():
        point, gci = (rec, ci) if group == "average" else results.group_recovery(name, group)
        groups[group] = {"recovery": point, "ci": list(gci) if gci else None}
        what = "average recovery" if group == "average" else f"{group} recovery"
        evidence[group] = accuracy_evidence(gci, bar) if point is not None else UNRESOLVED
        if point is None:
            reasons.append(f"no {what} measured")
        elif evidence[group] == BELOW:
            reasons.append(f"{what} {_with_ci(point, gci)} is below {pct(bar)} (resolved: the whole interval)")
        elif evidence[group] == UNRESOLVED:
            unresolved.append(f"{what} {_with_ci(point, gci)}")
            to_resolve[group] = items_to_resolve(point, gci, bar, items)
    decided_by = "accuracy" if all(e == MEETS for e in evidence.values()) else ""
    # Fall back on fidelity only where nothing is resolved below a floor and every group was measured.
    if unresolved and len(unresolved) == sum(e == UNRESOLVED for e in evidence.values()) \
            and BELOW not in evidence.values():
        floor = max(dep["min_recovery"][g] for g, e in evidence.items() if e == UNRESOLVED)
        verdict_f, why = fidelity_evidence(Fidelity(**fid), floor, NoiseFloor(**results.noise_floor()))
        head = f"{' and '.join(unresolved)} is unresolved at {items or '?'} items per task against {pct(floor)}"
        if verdict_f == MEETS:
            decided_by = "fidelity"
            warnings.append(f"{head}; decided on the resolved signals, all close to BF16: {'; '.join(why)}")
        else:
            reasons.append(f"{head}, and the resolved signals do not show it close to BF16: {'; '.join(why)}")
    if name != BASELINE:
        warnings += _hidden_losses(name, results)
    return Candidate(name, fmt, label, rec, ci, verdict, groups, status, cost and cost.queries_per_usd,
                     cost and cost.source, cost and cost.latency_s, cost and cost.requests_per_s,
                     cost and cost.gpus, cost and cost.usd_per_hour, not reasons, tuple(reasons), tuple(warnings),
                     evidence=evidence, decided_by=decided_by, fidelity=fid, items=items,
                     items_to_resolve=to_resolve)


def _with_ci(point: float, ci) -> str:
    return pct(point) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _items(name: str, results: StudyResults) -> int | None:
    """Items per task behind a variant's accuracy average (the smallest task's)."""
    agg = (results.evaluate.average if results.evaluate else {}).get(name)
    return min((t.n for t in agg.per_task), default=None) if agg else None


def _hidden_losses(name: str, results: StudyResults) -> list[str]:
    """Losses the accuracy average cannot show: a degraded perplexity, answers whose meaning moves."""
    out = []
    for task, e in (results.evaluate.tasks if results.evaluate else {}).items():
        c = e.variants.get(name)
        if e.metric != "accuracy" and getattr(c, "verdict", None) == "degraded" and c.recovery is not None:
            out.append(f"{task} recovery {pct(c.recovery)} is degraded, which the accuracy average does not include")
    for v in results.compare.variants if results.compare else ():
        if v.name == name and paper_observation(v.aggregates).meaning == "changed":
            sts = v.aggregates.sts
            out.append(f"its answers' meaning moves from BF16's (STS {sts.mean:.2f} [{sts.ci[0]:.2f}, {sts.ci[1]:.2f}], "
                       f"below the paraphrase level {PARAPHRASE_STS:.2f})")
    return out


def pareto_front(cands) -> list[str]:
    """Names of candidates no other candidate beats on both recovery and queries/$ (refused
    and unpriced ones excluded), in order of rising queries/$."""
    pts = [c for c in cands if c.status != "refused" and c.recovery is not None and c.queries_per_usd]
    r = {c.name: ranking_recovery(c.recovery) for c in pts}   # above 100% is no loss, not a gain
    front = [c for c in pts if not any(
        r[o.name] >= r[c.name] and o.queries_per_usd >= c.queries_per_usd
        and (r[o.name] > r[c.name] or o.queries_per_usd > c.queries_per_usd) for o in pts)]
    return [c.name for c in sorted(front, key=lambda c: (c.queries_per_usd, r[c.name], c.name))]


def closeness(c: Candidate) -> tuple:
    """How close to BF16 on resolved signals, larger is closer: the baseline, then lower KL,
    then capped recovery (a noisy 106% ranks as 100%)."""
    kl = 0.0 if c.name == BASELINE else c.fidelity.get("kl")
    return (-(kl if kl is not None else float("inf")), ranking_recovery(c.recovery))


def better(a: Candidate, b: Candidate) -> bool:
    """a beats b: more queries/$ beyond the tie tolerance, else closer to BF16 on the resolved
    signals (`closeness`), else name order."""
    qa, qb = a.queries_per_usd, b.queries_per_usd
    if abs(qa - qb) > TIE * max(qa, qb):
        return qa > qb
    return (closeness(a), b.name) > (closeness(b), a.name)


def ranking(cands: list[Candidate]) -> list[str]:
    """Every candidate in order: feasible ones by `better`, then the infeasible -- those that
    meet the floor but break another constraint, then those whose accuracy is unresolved, then
    those resolved below a floor, each by queries/$. A variant
    whose interval straddles the floor is never ranked above a feasible (resolved) one."""
    import functools

    feasible = sorted((c for c in cands if c.feasible),
                      key=functools.cmp_to_key(lambda a, b: -1 if better(a, b) else 1 if better(b, a) else 0))
    rest = sorted((c for c in cands if not c.feasible),
                  key=lambda c: (not c.decided_by, BELOW in c.evidence.values(), -(c.queries_per_usd or 0.0), c.name))
    return [c.name for c in feasible + rest]
