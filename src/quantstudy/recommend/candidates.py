"""Each candidate against the deployment's constraints: feasible or not, and why.

Candidates are the BF16 baseline and every variant. Each gets an accuracy figure (the
evaluate stage's recovery of the task average, with its paired-bootstrap interval) and a
cost figure for the deployment (`costs`). Recovery constraints use the point estimate (the
paper's convention) and say so when the interval's lower bound falls below the bar.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantstudy.bench.records import PredictedRow
from quantstudy.compare.verdict import PARAPHRASE_STS, paper_observation
from quantstudy.recommend.costs import measured_cost, predicted_cost, support_status
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
    warnings: tuple[str, ...]       # feasible but worth knowing (fallback kernel, interval below the bar)
    on_front: bool = False


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
    groups = {}
    for group, bar in dep["min_recovery"].items():
        point, gci = (rec, ci) if group == "average" else results.group_recovery(name, group)
        groups[group] = {"recovery": point, "ci": list(gci) if gci else None}
        what = "average recovery" if group == "average" else f"{group} recovery"
        if point is None:
            reasons.append(f"no {what} measured")
        elif point < bar:
            reasons.append(f"{what} {pct(point)} < {pct(bar)}")
        elif gci and gci[0] < bar:
            warnings.append(f"{what} {pct(point)} meets {pct(bar)} but its 95% interval reaches down to "
                            f"{pct(gci[0])}")
    if name != BASELINE:
        warnings += _hidden_losses(name, results)
    return Candidate(name, fmt, label, rec, ci, verdict, groups, status, cost and cost.queries_per_usd,
                     cost and cost.source, cost and cost.latency_s, cost and cost.requests_per_s,
                     cost and cost.gpus, cost and cost.usd_per_hour, not reasons, tuple(reasons), tuple(warnings))


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
    front = [c for c in pts if not any(
        o.recovery >= c.recovery and o.queries_per_usd >= c.queries_per_usd
        and (o.recovery > c.recovery or o.queries_per_usd > c.queries_per_usd) for o in pts)]
    return [c.name for c in sorted(front, key=lambda c: (c.queries_per_usd, c.recovery, c.name))]


def better(a: Candidate, b: Candidate) -> bool:
    """a beats b: more queries/$ beyond the tie tolerance, else higher recovery, else name order."""
    qa, qb = a.queries_per_usd, b.queries_per_usd
    if abs(qa - qb) > TIE * max(qa, qb):
        return qa > qb
    return (a.recovery or 0.0, b.name) > (b.recovery or 0.0, a.name)
