"""The recommendation as a terminal table: one row per candidate in ranking order, with the
evidence behind each decision (what `quantstudy recommend` prints)."""

from __future__ import annotations

from rich.table import Table

from quantstudy.recommend import Recommendation


def decision_of(c) -> str:
    """meets (accuracy) / meets (fidelity) / unresolved / below / ruled out, in words."""
    if c.decided_by:
        label = f"meets ({c.decided_by})"
        return label if c.feasible else f"{label}, ruled out"
    if "below" in c.evidence.values():
        return "below the floor"
    if "unresolved" in c.evidence.values():
        return "unresolved"
    return "ruled out"


def _pct_ci(point, ci) -> str:
    if point is None:
        return "–"
    return f"{100 * point:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def candidates_table(rec: Recommendation) -> Table:
    dep = rec.deployment
    mode = "q/$" if dep["mode"] == "sync" else "async q/$"
    floors = ", ".join(f"{g} ≥ {100 * b:.1f}%" for g, b in dep["min_recovery"].items())
    table = Table(title=f"{dep['use_case']} on {dep['hardware']} ({dep['mode']}), floor {floors}")
    for col in ("", "candidate", "decision", "recovery % [95% CI]", "items", "KL", "ppl rec. %", mode, "GPUs",
                "why not"):
        table.add_column(col, justify="right" if col in ("items", "KL", "ppl rec. %", mode, "GPUs") else "left")
    for name in rec.ranking:
        c = rec.candidate(name)
        f = c.fidelity
        mark = "→" if name == rec.chosen else ""
        table.add_row(mark, c.label, decision_of(c), _pct_ci(c.recovery, c.recovery_ci if c.name != "baseline" else None),
                      str(c.items or "–"), f"{f['kl']:.3f}" if f.get("kl") is not None else "–",
                      f"{100 * f['ppl_recovery']:.1f}" if f.get("ppl_recovery") is not None else "–",
                      f"{c.queries_per_usd:,.0f} ({c.source[0]})" if c.queries_per_usd else "–",
                      str(c.gpus or "–"), "; ".join(c.reasons))
    return table
