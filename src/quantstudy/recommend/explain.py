"""The recommendation in words: what is resolved and how sure, then the numbers behind the choice.

It leads with the evidence -- the accuracy interval that clears the floor, or, where accuracy
is unresolved at the study's sample size, the fidelity signals the choice rests on -- and
says "unresolved" and "no measurable loss" as answers, not as caveats."""

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
    ratio = (f", {chosen.queries_per_usd / base.queries_per_usd:.2f}× BF16"
             if base and base.queries_per_usd and chosen.name != BASELINE else "")
    parts = [_evidence(chosen, dep),
             f"It serves {_where(dep, chosen.gpus)} at {chosen.queries_per_usd:,.0f} {mode} ({chosen.source}){ratio}."]
    cheaper = [c for c in cands if not c.feasible and c.queries_per_usd and c.status != "refused"
               and c.queries_per_usd > chosen.queries_per_usd * (1 + TIE)]
    rivals = [c for c in cands if c.feasible and c is not chosen and c.queries_per_usd]
    if cheaper:
        c = max(cheaper, key=lambda c: c.queries_per_usd)
        more = [f"{n:,} items per task would resolve its {g}" for g, n in c.items_to_resolve.items() if n]
        parts.append(f"{c.label} would serve more ({c.queries_per_usd:,.0f} {mode}, {c.source}) but is ruled "
                     f"out: {'; '.join(c.reasons)}" + (f" ({'; '.join(more)})" if more else "") + ".")
    elif rivals:
        c = max(rivals, key=lambda c: (c.queries_per_usd, c.recovery or 0))
        acc = f"{pct(c.recovery)} recovery, {c.verdict}, decided on {c.decided_by}" \
            if c.recovery is not None and c.name != BASELINE else "the baseline"
        if abs(c.queries_per_usd - chosen.queries_per_usd) <= TIE * chosen.queries_per_usd:
            same = c.recovery is not None and chosen.recovery is not None and abs(c.recovery - chosen.recovery) < 1e-9
            parts.append(f"{c.label} ({acc}) costs the same per query here"
                         + (" and recovers as much: either will do." if same else
                            f"; {chosen.label} is closer to BF16 on the resolved signals."))
        else:
            parts.append(f"{c.label} ({acc}) costs more per query here ({c.queries_per_usd:,.0f} {mode}) because "
                         f"{_why_costlier(c, chosen, dep['mode'])}.")
    caveats = [w for w in chosen.warnings if "decided on the resolved signals" not in w]
    if caveats:
        parts.append("Caveat: " + "; ".join(caveats) + ".")
    return " ".join(parts)


def _evidence(c: Candidate, dep: dict) -> str:
    """The first sentence: what decides that the choice meets the floor, and how sure."""
    floors = ", ".join(f"{g} {pct(b)}" for g, b in dep["min_recovery"].items())
    if c.name == BASELINE:
        return f"{c.label}, the unquantized baseline, is the choice (floor {floors})."
    ci = f" [{100 * c.recovery_ci[0]:.1f}, {100 * c.recovery_ci[1]:.1f}]" if c.recovery_ci else ""
    acc = f"{pct(c.recovery)} recovery" if c.recovery is not None else "no accuracy figure"
    lossless = c.recovery_ci and c.recovery_ci[0] <= 1.0 <= c.recovery_ci[1]
    n = f"{c.items:,} items per task" if c.items else "the items evaluated"
    if c.decided_by == "accuracy":
        return (f"{c.label} meets the floor ({floors}) on accuracy: {acc}{ci} at {n}, the whole 95% "
                f"interval above the floor" + (", no measurable loss." if lossless else "."))
    why = next((w.split("all close to BF16: ", 1)[1] for w in c.warnings if "all close to BF16: " in w), "")
    return (f"{c.label}'s accuracy is unresolved at {n} ({acc}{ci} against {floors}); it meets the floor on the "
            f"resolved signals, all close to BF16: {why}.")
