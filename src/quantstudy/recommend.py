"""Deployment constraints -> a format: feasibility, the cheapest feasible choice, the Pareto front.

Reads only a study-results dict (see `report`); never runs a model. Candidates are the
BF16 baseline and every variant. Each gets an accuracy figure (the evaluate stage's
recovery of the task average, with its paired-bootstrap interval) and a cost figure for
the deployment: synchronous queries/$ from per-query latency, or asynchronous queries/$
from requests/s at saturation. A cost is *measured* where the bench ran on the
deployment's hardware and use case at full size, otherwise *predicted* by the roofline
model; every figure says which, because the two are not equally trustworthy.

The choice is the cheapest per query among the feasible candidates (ties -> higher
recovery): the paper's framing, where a format that meets the accuracy bar is judged by
what it costs to serve. Recovery constraints use the point estimate (the paper's
convention) and say so when the interval's lower bound falls below the bar.

The accessors for the nested producer shapes (`measured_points`, `predicted_rows`,
`accuracy_of`) live here, in one place, so a change in bench/evaluate output is one edit.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from quantstudy.compare.verdict import PARAPHRASE_STS, paper_observation
from quantstudy.errors import QuantstudyError

BASELINE = "baseline"
DEFAULT_USE_CASE = "instruction-following"
# The paper calls a format near-lossless at ~99% recovery; used only when none is given.
DEFAULT_MIN_RECOVERY = 0.99
# Relative difference under which two queries/$ figures count as a tie (FP8 and INT8 share
# one roofline on Hopper, so exact ties are common in predictions).
TIE = 1e-6
# Which evaluate tasks make up a task group for per-group recovery constraints.
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "academic": ("mmlu", "mmlu_cot", "mmlu_pro", "arc_challenge", "arc", "hellaswag", "winogrande", "gsm8k",
                 "truthfulqa", "ifeval", "bbh", "math", "gpqa", "musr"),
    "code": ("humaneval", "humaneval_plus", "mbpp"),
    "long-context": ("ruler",),
}


# ---- reading the study-results dict ----------------------------------------------------------

def hardware_key(name: str | None) -> str:
    """Canonical hardware name ('NVIDIA H100 80GB' -> 'h100'), so bench, predictions and the
    deployment match whatever spelling each used. Unknown names (CPUs) are lower-cased."""
    if not name:
        return ""
    from quantstudy.bench.hardware import GPUS, get_gpu

    try:
        return get_gpu(name).name
    except QuantstudyError:
        # Marketing names put the model mid-string ('NVIDIA RTX A6000'): a catalogue name inside.
        flat = re.sub(r"[\s_-]", "", name.lower())
        inside = [g for g in GPUS if g in flat]
        return max(inside, key=len) if inside else name.strip().lower()


def _tp_size(record: dict) -> int:
    """GPUs a measured engine used, from its recorded vLLM arguments (1 when not recorded)."""
    if isinstance(record.get("gpus"), int) and record["gpus"] > 0:
        return record["gpus"]
    args = " ".join(map(str, (record.get("engine") or {}).get("args") or []))
    tp = re.search(r"(?:--tensor-parallel-size|-tp)[ =](\d+)", args)
    pp = re.search(r"(?:--pipeline-parallel-size|-pp)[ =](\d+)", args)
    return (int(tp.group(1)) if tp else 1) * (int(pp.group(1)) if pp else 1)


def measured_points(results: dict) -> list[dict]:
    """bench.measured records (BenchResult.to_dict(), or flat records with a `mode`) as flat dicts:
    fmt, use_case, mode ('sync'|'async'), profile label, scale, gpus and the latency/throughput numbers."""
    bench = results.get("bench") or {}
    out = []
    for rec in bench.get("measured") or []:
        m = rec.get("metrics") or rec
        profile = rec.get("profile") or rec.get("mode") or "synchronous"
        mode = rec.get("mode") or ("sync" if profile in ("synchronous", "sync") else "async")
        params = rec.get("params") or {}
        label = {"synchronous": "sync", "concurrent": f"conc={params.get('concurrency')}",
                 "poisson": f"rate={params.get('rate')}/s", "throughput": "max"}.get(profile, str(profile))
        out.append({
            "fmt": str(rec.get("fmt") or rec.get("format") or "unknown").lower(), "use_case": rec.get("use_case"),
            "mode": mode, "profile": label, "scale": float(rec.get("scale", 1.0)), "gpus": _tp_size(rec),
            "prompt_tokens": rec.get("prompt_tokens"), "output_tokens": rec.get("output_tokens"),
            **{k: m.get(k) for k in ("requests_per_s", "output_tokens_per_s", "e2e_mean_s", "e2e_median_s",
                                     "e2e_p90_s", "ttft_median_s", "ttft_p90_s", "itl_median_s", "itl_p90_s")}})
    return out


def predicted_rows(results: dict) -> list[dict]:
    """The `predicted` list (shape, hardware, use_case + CostRow fields), hardware canonicalised."""
    return [{**row, "hardware": hardware_key(row.get("hardware"))} for row in results.get("predicted") or []]


def accuracy_of(results: dict, name: str) -> tuple[float | None, tuple[float, float] | None, str]:
    """(average recovery, its interval, verdict) of a variant; the baseline is 1 by definition."""
    if name == BASELINE:
        return 1.0, (1.0, 1.0), "baseline"
    agg = ((results.get("evaluate") or {}).get("average") or {}).get(name)
    if not agg or agg.get("recovery") is None:
        return None, None, ""
    ci = agg.get("recovery_ci")
    return float(agg["recovery"]), (tuple(ci) if ci else None), agg.get("verdict", "")


def group_recovery(results: dict, name: str, group: str) -> tuple[float | None, tuple[float, float] | None]:
    """Recovery of a task group's average (ratio of averages, as the paper's average row).
    The interval is known only for a one-task group (its task's interval)."""
    if name == BASELINE:
        return 1.0, (1.0, 1.0)
    members = TASK_GROUPS.get(group, ())
    comps = [(t, e["variants"][name]) for t, e in ((results.get("evaluate") or {}).get("tasks") or {}).items()
             if t in members and e.get("metric") == "accuracy" and name in e.get("variants", {})]
    base = sum(c["baseline_mean"] for _, c in comps)
    if not comps or base <= 0:
        return None, None
    ci = comps[0][1].get("recovery_ci") if len(comps) == 1 else None
    return sum(c["variant_mean"] for _, c in comps) / base, (tuple(ci) if ci else None)


# ---- the recommendation ----------------------------------------------------------------------

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


@dataclass(frozen=True)
class Recommendation:
    deployment: dict
    chosen: str | None
    candidates: tuple[Candidate, ...]
    pareto: tuple[str, ...]
    explanation: str
    notes: tuple[str, ...] = field(default=())

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def to_dict(self) -> dict:
        # Through JSON and back: tuples become lists, so this equals what results.json holds.
        return json.loads(json.dumps(asdict(self)))


def _deployment(results: dict, override: dict | None) -> dict:
    dep = {"hardware": None, "mode": "sync", "use_case": DEFAULT_USE_CASE, "latency_slo_s": None,
           "min_recovery": DEFAULT_MIN_RECOVERY, "budget_usd_per_hour": None,
           **(results.get("deployment") or {}), **(override or {})}
    if dep["mode"] not in ("sync", "async"):
        raise QuantstudyError(f"deployment mode must be sync or async, not {dep['mode']!r}")
    if not dep["hardware"]:
        raise QuantstudyError("the deployment needs a hardware name (e.g. a6000, h100)")
    bar = dep["min_recovery"]
    dep["min_recovery"] = {"average": float(bar)} if isinstance(bar, (int, float)) else dict(bar or {})
    for group in dep["min_recovery"]:
        if group != "average" and group not in TASK_GROUPS:
            raise QuantstudyError(f"unknown task group {group!r}; known: average, {', '.join(TASK_GROUPS)}")
    return dep


def _usd_per_gpu(hw: str, predicted: list[dict]) -> float | None:
    for row in predicted:
        if row["hardware"] == hw and row.get("gpus"):
            return row["usd_per_hour"] / row["gpus"]
    from quantstudy.bench.cost import load_prices

    prices = load_prices()
    row = prices["gpus"].get(hw) or (prices["cpus"].get(prices.get("cpu_default")) if hw.startswith("cpu") else None)
    return float(row["usd_per_hour"]) if row else None


def _measured_cost(fmt: str, dep: dict, hw: str, results: dict, predicted: list[dict]) -> dict | None:
    """Cost from the bench when it ran this format, use case and mode on this hardware at full size."""
    if hardware_key((results.get("bench") or {}).get("hardware")) != hw:
        return None
    points = [p for p in measured_points(results) if p["fmt"] == fmt and p["use_case"] == dep["use_case"]
              and p["mode"] == dep["mode"] and p["scale"] == 1.0 and _positive(p["requests_per_s"])
              and _positive(p["e2e_mean_s"]) and _positive(p["e2e_median_s"])]
    price = _usd_per_gpu(hw, predicted)
    if not points or price is None:
        return None
    if dep["mode"] == "sync":
        p = points[0]
        usd, latency = price * p["gpus"], p["e2e_mean_s"]   # the mean sets how many queries an hour holds
        return {"queries_per_usd": 3600.0 / (latency * usd), "latency_s": latency, "slo_latency_s": p["e2e_p90_s"],
                "requests_per_s": p["requests_per_s"], "gpus": p["gpus"], "usd_per_hour": usd}
    # Async: the best load level whose tail latency meets the SLO (the paper's "queries per
    # second under latency limits"); without an SLO, the highest throughput measured.
    slo = dep["latency_slo_s"]
    meeting = [p for p in points if slo is None or (p["e2e_p90_s"] or float("inf")) <= slo]
    p = max(meeting or points, key=lambda q: q["requests_per_s"])
    usd = price * p["gpus"]
    return {"queries_per_usd": p["requests_per_s"] * 3600.0 / usd, "latency_s": p["e2e_median_s"],
            "slo_latency_s": p["e2e_p90_s"], "requests_per_s": p["requests_per_s"], "gpus": p["gpus"],
            "usd_per_hour": usd, "slo_unmet": not meeting}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0 and x != float("inf")   # NaN > 0 is False


def _predicted_cost(row: dict, mode: str) -> dict | None:
    if not row or not row.get("gpus"):
        return None
    if mode == "sync":
        return {"queries_per_usd": row["sync_queries_per_usd"], "latency_s": row["latency_s"],
                "slo_latency_s": row["latency_s"], "requests_per_s": row["requests_per_s"], "gpus": row["gpus"],
                "usd_per_hour": row["usd_per_hour"]}
    gpus = row.get("async_gpus") or row["gpus"]
    # Async latency under load is not predicted; a lone request's latency is its lower bound.
    return {"queries_per_usd": row["async_queries_per_usd"], "latency_s": row["latency_s"],
            "slo_latency_s": row["latency_s"], "requests_per_s": row["requests_per_s"], "gpus": gpus,
            "usd_per_hour": row["usd_per_hour"] / row["gpus"] * gpus}


def _status(fmt: str, hw: str, row: dict | None) -> tuple[str, str]:
    if row:
        return row.get("status", "unknown"), row.get("note", "")
    from quantstudy.bench.hardware import get_gpu
    from quantstudy.bench.preflight import preflight

    try:
        s = preflight(fmt, get_gpu(hw))
    except QuantstudyError:
        return "unknown", ""
    return s.status, s.reason if s.status != "native" else ""


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _candidate(name, fmt, label, results, dep, hw, predicted) -> Candidate:
    rows = [r for r in predicted if r["fmt"] == fmt and r["hardware"] == hw and r.get("use_case") == dep["use_case"]]
    row = rows[0] if rows else None
    status, status_note = _status(fmt, hw, row)
    rec, ci, verdict = accuracy_of(results, name)
    reasons, warnings = [], []
    cost, source = None, None
    if status == "refused":
        reasons.append(f"refused on {hw}: {status_note}")
    else:
        cost = _measured_cost(fmt, dep, hw, results, predicted)
        source = "measured" if cost else None
        if cost is None:
            cost = _predicted_cost(row, dep["mode"])
            source = "predicted" if cost else None
        if cost is None:
            reasons.append(f"no cost figure for {fmt} on {hw} / {dep['use_case']}"
                           + (f" ({row['note']})" if row and row.get("note") else ""))
        if status == "fallback":
            warnings.append(f"runs through a fallback kernel on {hw}: {status_note}")
    slo, budget = dep["latency_slo_s"], dep["budget_usd_per_hour"]
    if cost and slo is not None:
        if cost.get("slo_unmet"):
            reasons.append(f"no measured load level keeps p90 latency within the {slo:g} s SLO")
        elif cost["slo_latency_s"] is not None and cost["slo_latency_s"] > slo:
            what = "p90 latency" if source == "measured" else "latency of a lone request"
            reasons.append(f"{what} {cost['slo_latency_s']:.2f} s > SLO {slo:g} s ({source})")
        elif dep["mode"] == "async" and source == "predicted":
            warnings.append("latency under load is not predicted; only a lone request's was checked against the SLO")
    if cost and budget is not None and cost["usd_per_hour"] > budget:
        reasons.append(f"${cost['usd_per_hour']:.2f}/h on {cost['gpus']} GPU(s) > budget ${budget:g}/h")
    groups = {}
    for group, bar in dep["min_recovery"].items():
        point, gci = (rec, ci) if group == "average" else group_recovery(results, name, group)
        groups[group] = {"recovery": point, "ci": list(gci) if gci else None}
        what = "average recovery" if group == "average" else f"{group} recovery"
        if point is None:
            reasons.append(f"no {what} measured")
        elif point < bar:
            reasons.append(f"{what} {_pct(point)} < {_pct(bar)}")
        elif gci and gci[0] < bar:
            warnings.append(f"{what} {_pct(point)} meets {_pct(bar)} but its 95% interval reaches down to "
                            f"{_pct(gci[0])}")
    if name != BASELINE:   # a loss the accuracy average cannot show (perplexity, KL) still counts as a caveat
        for task, e in ((results.get("evaluate") or {}).get("tasks") or {}).items():
            c = (e.get("variants") or {}).get(name) or {}
            if e.get("metric") != "accuracy" and c.get("verdict") == "degraded" and c.get("recovery") is not None:
                warnings.append(f"{task} recovery {_pct(c['recovery'])} is degraded, which the accuracy "
                                "average does not include")
        for v in (results.get("compare") or {}).get("variants") or []:
            if v["name"] == name:   # answers whose meaning moves: a cost the scores need not show
                if paper_observation(v["aggregates"]).meaning == "changed":
                    sts = v["aggregates"]["sts"]
                    warnings.append(f"its answers' meaning moves from BF16's (STS {sts['mean']:.2f} "
                                    f"[{sts['ci'][0]:.2f}, {sts['ci'][1]:.2f}], below the paraphrase level "
                                    f"{PARAPHRASE_STS:.2f})")
    got = (cost or {}).get
    return Candidate(name, fmt, label, rec, ci, verdict, groups, status, got("queries_per_usd"), source,
                     got("latency_s"), got("requests_per_s"), got("gpus"), got("usd_per_hour"), not reasons,
                     tuple(reasons), tuple(warnings))


def pareto_front(cands) -> list[str]:
    """Names of candidates no other candidate beats on both recovery and queries/$ (refused
    and unpriced ones excluded), in order of rising queries/$."""
    pts = [c for c in cands if c.status != "refused" and c.recovery is not None and c.queries_per_usd]
    front = [c for c in pts if not any(
        o.recovery >= c.recovery and o.queries_per_usd >= c.queries_per_usd
        and (o.recovery > c.recovery or o.queries_per_usd > c.queries_per_usd) for o in pts)]
    return [c.name for c in sorted(front, key=lambda c: (c.queries_per_usd, c.recovery, c.name))]


def _better(a: Candidate, b: Candidate) -> bool:
    """a beats b: more queries/$ beyond the tie tolerance, else higher recovery, else name order."""
    qa, qb = a.queries_per_usd, b.queries_per_usd
    if abs(qa - qb) > TIE * max(qa, qb):
        return qa > qb
    return (a.recovery or 0.0, b.name) > (b.recovery or 0.0, a.name)


def recommend(results: dict, deployment: dict | None = None) -> Recommendation:
    """Pick a format for `deployment` (merged over results['deployment']); see the module docstring."""
    dep = _deployment(results, deployment)
    hw = hardware_key(dep["hardware"])
    predicted = predicted_rows(results)
    shapes = list(dict.fromkeys(r.get("shape") for r in predicted))
    notes = []
    if len(shapes) > 1:
        # Several model shapes predicted: use the one named like the study's model, else the first.
        model = results.get("model") or {}
        wanted = next((s for s in shapes if s in (model.get("name"), model.get("ref"))), shapes[0])
        predicted = [r for r in predicted if r.get("shape") == wanted]
        notes.append(f"predictions for {wanted} used (also present: {', '.join(map(str, shapes[1:]))})")
    bench_hw = hardware_key((results.get("bench") or {}).get("hardware"))
    if measured_points(results) and bench_hw != hw:
        notes.append(f"the bench ran on {bench_hw}, not {hw}: its measurements are reported, costs here are predicted")
    elif any(p["scale"] != 1.0 for p in measured_points(results)):
        notes.append("bench runs with shrunk use cases (scale != 1) do not measure the deployment's workload "
                     "and are not used for its cost")
    entries = [(BASELINE, "bf16", "BF16")] + [
        (v["name"], v["format"].lower(), v.get("label") or v["format"].upper()) for v in results.get("variants", [])]
    cands = [_candidate(n, f, lab, results, dep, hw, predicted) for n, f, lab in entries]
    front = set(pareto_front(cands))
    cands = [Candidate(**{**asdict(c), "on_front": c.name in front}) for c in cands]
    chosen = None
    for c in cands:
        if c.feasible and (chosen is None or _better(c, chosen)):
            chosen = c
    dep_out = {**dep, "hardware": hw}
    return Recommendation(dep_out, chosen.name if chosen else None, tuple(cands), tuple(pareto_front(cands)),
                          explain(chosen, cands, dep_out), tuple(notes))


def _where(dep: dict, gpus: int | None) -> str:
    return f"{dep['use_case'].replace('-', ' ')} on {gpus or '?'}×{dep['hardware'].upper()}"


def _why_costlier(other: Candidate, chosen: Candidate, mode: str) -> str:
    if other.gpus and chosen.gpus and other.gpus != chosen.gpus:
        return f"it needs {other.gpus} GPUs to {chosen.gpus}"
    if mode == "sync" and other.latency_s and chosen.latency_s:
        return f"each query takes {other.latency_s:.2f} s against {chosen.latency_s:.2f} s"
    if other.requests_per_s and chosen.requests_per_s:
        return f"it serves {other.requests_per_s:.1f} requests/s against {chosen.requests_per_s:.1f}"
    return "of its price"


def explain(chosen: Candidate | None, cands: list[Candidate], dep: dict) -> str:
    """Two or three sentences with the numbers behind the choice (or behind every refusal)."""
    mode = "queries/$" if dep["mode"] == "sync" else "async queries/$"
    if chosen is None:
        why = "; ".join(f"{c.label}: {', '.join(c.reasons)}" for c in cands)
        return (f"No format meets the constraints for {dep['use_case'].replace('-', ' ')} on "
                f"{dep['hardware'].upper()} ({dep['mode']}): {why}.")
    base = next((c for c in cands if c.name == BASELINE), None)
    ratio = (f", {chosen.queries_per_usd / base.queries_per_usd:.1f}× BF16"
             if base and base.queries_per_usd and chosen.name != BASELINE else "")
    ci = (f" [{100 * chosen.recovery_ci[0]:.1f}, {100 * chosen.recovery_ci[1]:.1f}]"
          if chosen.recovery_ci and chosen.name != BASELINE else "")
    acc = "the unquantized baseline" if chosen.name == BASELINE else f"{_pct(chosen.recovery)} average recovery{ci}"
    parts = [f"{chosen.label} serves {_where(dep, chosen.gpus)} at {chosen.queries_per_usd:,.0f} {mode} "
             f"({chosen.source}){ratio}, with {acc}."]
    cheaper = [c for c in cands if not c.feasible and c.queries_per_usd and c.status != "refused"
               and c.queries_per_usd > chosen.queries_per_usd * (1 + TIE)]
    rivals = [c for c in cands if c.feasible and c is not chosen and c.queries_per_usd]
    if cheaper:
        c = max(cheaper, key=lambda c: c.queries_per_usd)
        parts.append(f"{c.label} would serve more ({c.queries_per_usd:,.0f} {mode}, {c.source}) but is ruled "
                     f"out: {'; '.join(c.reasons)}.")
    elif rivals:
        c = max(rivals, key=lambda c: (c.queries_per_usd, c.recovery or 0))
        acc = f"{_pct(c.recovery)} recovery, {c.verdict}" if c.recovery is not None and c.name != BASELINE \
            else "the baseline"
        if abs(c.queries_per_usd - chosen.queries_per_usd) <= TIE * chosen.queries_per_usd:
            same = c.recovery is not None and chosen.recovery is not None and abs(c.recovery - chosen.recovery) < 1e-9
            parts.append(f"{c.label} ({acc}) costs the same per query here"
                         + (" and recovers as much: either will do." if same else f"; {chosen.label} recovers more."))
        else:
            parts.append(f"{c.label} ({acc}) costs more per query here ({c.queries_per_usd:,.0f} {mode}) because "
                         f"{_why_costlier(c, chosen, dep['mode'])}.")
    if chosen.warnings:
        parts.append("Caveat: " + "; ".join(chosen.warnings) + ".")
    return " ".join(parts)
