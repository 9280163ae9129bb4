"""The top of the report: the decision, how sure it is, and one compact row per candidate.

A reader with a laptop gets the answer without scrolling sideways: nine short columns
(decision, recovery with its interval and the items behind it, KL, perplexity recovery, STS,
the bench's measured latency, queries per dollar on the deployment). The per-task detail,
examples and notes follow in their own sections; notes there are grouped by kind.
"""

from __future__ import annotations

import re

from quantstudy.recommend import Recommendation
from quantstudy.recommend.table import decision_of
from quantstudy.report.tables import Table, num, pct, pct_ci
from quantstudy.results import BASELINE, StudyResults


def answer_table(results: StudyResults, rec: Recommendation | None) -> Table:
    mode = "queries/$" if not rec or rec.deployment["mode"] == "sync" else "async queries/$"
    hw = rec.deployment["hardware"] if rec else "?"
    cols = ["candidate", "decision", "recovery % [95% CI]", "items", "KL", "ppl rec. %", "STS",
            "measured s/query", f"{mode} ({hw})"]
    t = Table("answer", "The answer: every candidate, best first", cols)
    if rec is None:
        return t
    sts = {v.name: v.aggregates.sts for v in results.compare.variants} if results.compare else {}
    sync = {}
    for p in results.measured_points():
        if p.mode == "sync" and p.e2e_mean_s:
            sync.setdefault(p.fmt, p.e2e_mean_s)
    for name in rec.ranking:
        c = rec.candidate(name)
        f = c.fidelity
        need = [n for n in c.items_to_resolve.values() if n]
        items = "–" if c.items is None else f"{c.items:,}" + (f" (→{max(need):,})" if need and not c.decided_by else "")
        s = sts.get(name)
        mark = "→ " if name == rec.chosen else ""
        t.add([mark + c.label, decision_of(c),
               "100 (reference)" if name == BASELINE else pct_ci(c.recovery, c.recovery_ci), items,
               "–" if f.get("kl") is None else f"{f['kl']:.3f}", pct(f.get("ppl_recovery")),
               "–" if s is None else f"{s.mean:.2f}", num(sync.get(c.fmt)),
               "–" if not c.queries_per_usd else f"{c.queries_per_usd:,.0f} ({(c.source or '?')[0]})"],
              {"candidate": name, "chosen": name == rec.chosen, "decision": decision_of(c),
               "decided_by": c.decided_by, "recovery": c.recovery,
               "recovery_lo": c.recovery_ci[0] if c.recovery_ci else None,
               "recovery_hi": c.recovery_ci[1] if c.recovery_ci else None, "items": c.items,
               "items_to_resolve": max(need) if need else None, "kl": f.get("kl"),
               "ppl_recovery": f.get("ppl_recovery"), "sts": s.mean if s else None,
               "measured_s_per_query": sync.get(c.fmt), "queries_per_usd": c.queries_per_usd, "source": c.source})
    return t


def adaptive_lines(results: StudyResults) -> list[str]:
    """Evaluated until decided: the items each task and each decision took."""
    a = results.evaluate.adaptive if results.evaluate else {}
    out = []
    for task, entry in (a.get("tasks") or {}).items():
        parts = []
        for name, d in entry["variants"].items():
            what = f"{results.label(name)} {d['decision']} at {d['items']:,} items"
            if d["decision"] == "unresolved" and d.get("items_needed"):
                what += f" (about {d['items_needed']:,} would resolve it)"
            parts.append(what)
        out.append(f"{task}: {entry['rounds']} round(s), {'; '.join(parts)}")
    if out:
        out.insert(0, f"Evaluated until decided against {100 * a['floor']:.1f}% recovery: rounds of {a['round']} "
                      f"items, at most {a['budget']} per task, group-sequential test at one-sided level "
                      f"{a['alpha']} per look schedule (O'Brien-Fleming-like spending).")
    return out


_NUMBERS = re.compile(r"\s*\([^()]*\d[^()]*\)")


def grouped_notes(notes: list[str]) -> list[str]:
    """'task / variant: note' lines grouped by what the note says (its numbers set aside): one
    line per kind of note, naming every task and variant it applies to."""
    groups: dict[str, list[str]] = {}
    for line in notes:
        where, _, note = line.partition(": ")
        kind = _NUMBERS.sub("", note)
        groups.setdefault(kind, []).append(where)
    return [f"{kind} — {', '.join(where)}" for kind, where in groups.items()]
