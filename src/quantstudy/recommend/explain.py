"""The recommendation in words: two or three sentences with the numbers behind the choice."""

from __future__ import annotations

from quantstudy.recommend.candidates import TIE, Candidate, pct
from quantstudy.results import BASELINE


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
    acc = "the unquantized baseline" if chosen.name == BASELINE else f"{pct(chosen.recovery)} average recovery{ci}"
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
        acc = f"{pct(c.recovery)} recovery, {c.verdict}" if c.recovery is not None and c.name != BASELINE \
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
