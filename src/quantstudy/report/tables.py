"""Paper-style tables from typed study results, rendered as Markdown, CSV and HTML.

Each table keeps two views of the same rows: `rows`, formatted for people (percentages,
intervals in brackets, thousands separators), and `records`, raw numbers for machines
(CSV). Both have one entry per task / variant / measurement, in the same order, so the
Markdown and CSV files describe the same thing at the same granularity.
"""

from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import asdict, dataclass, field

from quantstudy.recommend import Recommendation
from quantstudy.results import BASELINE, StudyResults

SIMILARITY = (("rouge1", "ROUGE-1"), ("rougeL", "ROUGE-L"), ("bertscore", "BERTScore"), ("sts", "STS"))


@dataclass
class Table:
    name: str                       # file stem: tables/<name>.md / .csv
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    def add(self, row: list[str], record: dict) -> None:
        self.rows.append(row)
        self.records.append(record)

    def markdown(self) -> str:
        def cell(x: str) -> str:  # a pipe or newline inside a cell would break the row
            return str(x).replace("|", "\\|").replace("\n", " ")

        lines = [f"### {self.title}", "", "| " + " | ".join(map(cell, self.columns)) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        keys = list(dict.fromkeys(k for r in self.records for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, keys, lineterminator="\n")
        writer.writeheader()
        for r in self.records:
            writer.writerow({k: _csv_value(r.get(k)) for k in keys})
        return buf.getvalue()

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in self.rows)
        return f'<table><caption>{html.escape(self.title)}</caption><thead><tr>{head}</tr></thead>' \
               f"<tbody>{body}</tbody></table>"


def _csv_value(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.6g}" if isinstance(x, float) else x


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def pct_ci(x, ci) -> str:
    return pct(x) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci and x is not None else "")


def num(x, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def ms(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{1e3 * x:,.0f}"


# ---- the tables -------------------------------------------------------------------------------

def variants_table(results: StudyResults) -> Table:
    t = Table("variants", "Variants", ["variant", "format", "algorithm", "size (GB)", "size vs BF16"])
    for v in results.variants:
        t.add([v.label or v.name, v.format, v.algorithm or "", num((v.size_bytes or 0) / 1e9),
               f"{v.size_vs_bf16:.2f}×" if v.size_vs_bf16 is not None else "–"],
              {k: getattr(v, k) for k in ("name", "format", "label", "algorithm", "size_bytes", "size_vs_bf16")})
    return t


def accuracy_table(results: StudyResults) -> Table:
    """Rows tasks, columns BF16 + per variant score, recovery [CI], flips and verdict; an average row."""
    ev = results.evaluate
    names = [v.name for v in results.variants]
    cols = ["task", "n", "BF16"]
    for n in names:
        label = results.label(n) + (" (vLLM)" if ev and ev.engine_of(n) == "vllm" else " (in process)" if ev and
                                    ev.served else "")
        cols += [f"{label}", f"{label} recovery % [95% CI]", f"{label} flips −/+", f"{label} verdict"]
    title = "Accuracy: score and recovery (variant / BF16) per task, 95% paired bootstrap"
    if ev and ev.served:
        title += ("; a variant served by vLLM is compared with BF16 served, one evaluated in process (emulated) "
                  "with BF16 in process (the BF16 column: served)")
    t = Table("accuracy", title, cols)
    for task, e in (ev.tasks if ev else {}).items():
        base = e.baseline
        row = [task, "" if e.n is None else str(e.n), (pct(base) if e.metric == "accuracy" else
                                                     f"ppl {num(base)}" if e.metric == "perplexity" else "–")]
        rec = {"task": task, "metric": e.metric, "n": e.n, "baseline": base}
        for n in names:
            c = e.variants.get(n)
            if c is None:
                row += ["–"] * 4
            elif e.metric == "accuracy":
                row += [pct(c.variant_mean), pct_ci(c.recovery, c.recovery_ci),
                        f"{c.flips_right_to_wrong}/{c.flips_wrong_to_right}", c.verdict]
            elif e.metric == "perplexity":
                row += [f"ppl {num(c.variant)}", pct_ci(c.recovery, c.recovery_ci), "", c.verdict]
            else:  # divergence: no baseline score, agreement with the baseline instead
                row += [f"KL {c.kl:.4f}", f"top-1 agree {pct_ci(c.top1_agreement, c.top1_ci)}", "", ""]
            score = getattr(c, "variant_mean", getattr(c, "variant", getattr(c, "kl", None)))
            ci = getattr(c, "recovery_ci", None) or [None, None]
            if hasattr(c, "top1_agreement"):
                rec[f"{n}_top1_agreement"] = c.top1_agreement
            rec.update({f"{n}_score": score, f"{n}_recovery": getattr(c, "recovery", None),
                        f"{n}_recovery_lo": ci[0], f"{n}_recovery_hi": ci[1],
                        f"{n}_flips_right_to_wrong": getattr(c, "flips_right_to_wrong", None),
                        f"{n}_flips_wrong_to_right": getattr(c, "flips_wrong_to_right", None),
                        f"{n}_verdict": getattr(c, "verdict", None)})
        t.add(row, rec)
    _aggregate_row(t, "average", ev.average if ev else {}, names)
    boards = ev.leaderboard if ev else {}
    for label, part in ((v1_label(boards), "v1"), ("v2 normalised avg", "v2")):
        _aggregate_row(t, label, {n: getattr(b, part) for n, b in boards.items()}, names)
    return t


def v1_label(boards: dict) -> str:
    """'Open LLM v1 avg', naming the v1 tasks the evaluation did not run (its tasks are shared)."""
    missing = next((b.v1_missing for b in boards.values() if b.v1 is not None), ())
    return "Open LLM v1 avg" + (f" (no {', '.join(missing)})" if missing else "")


def _aggregate_row(t: Table, label: str, aggs: dict, names: list[str]) -> None:
    """An aggregate's row (the average, a leaderboard one) when some variant has it; older
    records have no leaderboard. v2's baseline and scores are normalised: 0 = random guessing."""
    aggs = {n: a for n, a in aggs.items() if a is not None}
    if not aggs:
        return
    first = next(iter(aggs.values()))
    row = [label, "", pct(first.baseline_mean)]
    rec = {"task": label, "metric": "accuracy", "n": None, "baseline": first.baseline_mean}
    for n in names:
        a = aggs.get(n)
        row += ["–"] * 4 if a is None else [pct(a.variant_mean), pct_ci(a.recovery, a.recovery_ci), "", a.verdict]
        ci = (a.recovery_ci if a else None) or [None, None]
        rec.update({f"{n}_score": a and a.variant_mean, f"{n}_recovery": a and a.recovery,
                    f"{n}_recovery_lo": ci[0], f"{n}_recovery_hi": ci[1], f"{n}_verdict": a and a.verdict})
    t.add(row, rec)


def served_table(results: StudyResults) -> Table:
    """What the engine adds: served minus in-process accuracy per task (paired 95% CI, flip
    rate) and per-position fidelity (prefill | decode), for the BF16 noise floor and each
    served variant against its fake-quant twin; and each model's engine and kernels."""
    ev = results.evaluate
    cols = ["comparison", "task", "points served − reference [95% CI]", "flips", "KL prefill | decode",
            "top-1 prefill | decode", "ΔNLL prefill | decode"]
    t = Table("served", "Served (vLLM) vs in process: the engine's noise floor and each served variant against "
                        "its emulation (KL: top-k lower bound)", cols)
    served = ev.served if ev else {}
    if not served:
        return t
    rows = [("BF16 served vs in process (floor)", served["noise_floor"].get("engine")),
            ("BF16 served batched vs one at a time (floor)", served["noise_floor"].get("batching"))]
    rows += [(f"{results.label(n)} served vs emulated", e) for n, e in served["served_vs_emulated"].items()]

    def pair(fid, m, scale=1.0, fmt="{:.4f}"):
        if not fid:
            return "–"
        return " | ".join(fmt.format(scale * fid[p][m]["mean"]) if fid.get(p) and m in fid[p] else "–"
                          for p in ("prefill", "decode"))
    for label, entry in rows:
        if entry is None:
            continue
        fid = entry.get("fidelity")
        cells = [pair(fid, "kl"), pair(fid, "top1", 100, "{:.1f}%"), pair(fid, "dnll", 1, "{:+.3f}")]
        for task, g in (entry["tasks"] or {"–": None}).items():
            if g is None:
                t.add([label, "–", "–", "–", *cells], {"comparison": label})
                continue
            lo, hi = g["difference_ci"]
            t.add([label, task, f"{100 * g['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
                   f"{100 * g['flip_rate']:.0f}%", *cells],
                  {"comparison": label, "task": task, "difference": g["difference"], "difference_lo": lo,
                   "difference_hi": hi, "flip_rate": g["flip_rate"]})
    return t


def engines_notes(results: StudyResults) -> list[str]:
    """One line per model run: which engine, and for vLLM the kernel per layer type."""
    ev = results.evaluate
    out = []
    for run, rec in (ev.engines if ev else {}).items():
        kernels = ", ".join(f"{k['layer_type']}: {k['kernel']} ({k['status']})" for k in rec.get("kernels", []))
        out.append(f"{run}: {rec['engine']} {rec['version']} · {rec['dtype']} · {rec['device']} · {kernels}")
    for name, why in (ev.not_served if ev else {}).items():
        out.append(f"{name} evaluated in process (emulated), not served: {why}")
    if ev and ev.served:
        floor = ev.served.get("floor") or {}
        if floor:
            out.append("noise floor (|accuracy points| BF16 moves between engines and batchings): "
                       + ", ".join(f"{t} ±{100 * v:.1f}" for t, v in floor.items())
                       + "; a served variant's change is called real only when its interval lies beyond it")
    seeds = getattr(ev, "seed_floor", None) or {}
    if seeds:
        out.append("seed noise floor (|accuracy points| the baseline moves between runs with other seeds): "
                   + ", ".join(f"{t} ±{100 * f['floor']:.1f} ({f['draws']} draws)" for t, f in seeds.items())
                   + "; a variant's change is called real only when its interval lies beyond it")
    return out


def accuracy_notes(results: StudyResults) -> list[str]:
    ev = results.evaluate
    if ev is None:
        return []
    notes = [f"{task} / {n}: {note}" for task, e in ev.tasks.items()
             for n, c in e.variants.items() for note in getattr(c, "notes", ())]
    notes += [f"average / {n}: {note}" for n, a in ev.average.items() for note in a.notes]
    # of the leaderboard aggregates only the missing ratio needs saying; their width is the average's
    return notes + [f"{label} / {n}: {note}" for n, b in ev.leaderboard.items()
                    for label, a in (("Open LLM v1 avg", b.v1), ("v2 normalised avg", b.v2)) if a is not None
                    for note in a.notes if "near zero" in note]


def similarity_table(results: StudyResults) -> Table:
    cols = ["variant", "n", *(label for _, label in SIMILARITY), "exact match %", "median first divergence"]
    t = Table("similarity", "Text similarity to BF16 outputs (mean [95% CI])", cols)
    for v in results.compare.variants if results.compare else ():
        a = v.aggregates
        fd = a.first_divergence
        t.add([results.label(v.name), str(a.n),
               *(f"{a.get(m).mean:.3f} [{a.get(m).ci[0]:.3f}, {a.get(m).ci[1]:.3f}]" for m, _ in SIMILARITY),
               pct(a.exact_match.mean), "–" if fd is None else f"{fd['median']:.0f} tokens"],
              {"variant": v.name, "n": a.n,
               **{k: x for m, _ in SIMILARITY for k, x in ((m, a.get(m).mean), (f"{m}_lo", a.get(m).ci[0]),
                                                         (f"{m}_hi", a.get(m).ci[1]))},
               "exact_match": a.exact_match.mean, "first_divergence_median": fd and fd["median"]})
    return t


def measured_table(results: StudyResults) -> Table:
    hw = results.bench.hardware if results.bench else ""
    cols = ["format", "use case", "tokens", "scale", "profile", "GPUs", "req/s", "out tok/s", "TTFT p50 ms",
            "TTFT p90 ms", "ITL p50 ms", "ITL p90 ms", "E2E p50 ms", "E2E p90 ms"]
    t = Table("performance_measured", f"Measured serving performance on {hw}", cols)
    for p in results.measured_points():
        t.add([p.fmt, str(p.use_case), f"{p.prompt_tokens}/{p.output_tokens}", f"{p.scale:g}",
               p.profile, str(p.gpus), num(p.requests_per_s), num(p.output_tokens_per_s, 1),
               ms(p.ttft_median_s), ms(p.ttft_p90_s), ms(p.itl_median_s), ms(p.itl_p90_s),
               ms(p.e2e_median_s), ms(p.e2e_p90_s)], {"hardware": hw, **asdict(p)})
    return t


def predicted_table(results: StudyResults) -> Table:
    cols = ["shape", "hardware", "use case", "format", "support", "GPUs", "$/h", "sync latency s", "sync q/$",
            "async req/s", "async q/$ (GPUs)"]
    t = Table("performance_predicted", "Predicted serving cost (roofline model)", cols)
    for r in results.predicted_rows():
        runs = bool(r.gpus)
        t.add([str(r.shape), r.hardware, str(r.use_case), r.fmt, r.status,
               str(r.gpus) if runs else "–", num(r.usd_per_hour) if runs else "–",
               num(r.latency_s) if runs else "–", num(r.sync_queries_per_usd, 0) if runs else "–",
               num(r.requests_per_s) if runs else "–",
               f"{num(r.async_queries_per_usd, 0)} ({r.async_gpus})" if runs else "–"],
              {k: getattr(r, k) for k in ("shape", "hardware", "use_case", "fmt", "status", "gpus", "usd_per_hour",
                                          "latency_s", "sync_queries_per_usd", "requests_per_s",
                                          "async_queries_per_usd", "async_gpus", "note")})
    return t


def recommendation_table(rec: Recommendation | None) -> Table:
    groups = list(rec.deployment["min_recovery"]) if rec else []
    qcol = "queries/$" if not rec or rec.deployment["mode"] == "sync" else "async queries/$"
    cols = ["candidate", "format", "support", "recovery % [95% CI]",
            *(f"{g} recovery %" for g in groups if g != "average"), qcol, "source", "latency s", "GPUs", "$/h",
            "Pareto", "feasible", "why not / caveats"]
    t = Table("recommendation", "Recommendation: candidates under the deployment constraints", cols)
    for c in rec.candidates if rec else ():
        mark = "chosen" if c.name == rec.chosen else ("yes" if c.feasible else "no")
        recovery = "100 (reference)" if c.name == BASELINE else pct_ci(c.recovery, c.recovery_ci)
        t.add([c.label, c.fmt, c.status, recovery,
               *(pct(c.groups[g]["recovery"]) for g in groups if g != "average"), num(c.queries_per_usd, 0),
               c.source or "–", num(c.latency_s), str(c.gpus or "–"), num(c.usd_per_hour),
               "front" if c.on_front else "", mark, "; ".join(c.reasons + c.warnings)],
              {"candidate": c.name, "format": c.fmt, "status": c.status, "recovery": c.recovery,
               "recovery_lo": c.recovery_ci[0] if c.recovery_ci else None,
               "recovery_hi": c.recovery_ci[1] if c.recovery_ci else None,
               **{f"{g}_recovery": c.groups[g]["recovery"] for g in groups if g != "average"},
               "queries_per_usd": c.queries_per_usd, "source": c.source, "latency_s": c.latency_s, "gpus": c.gpus,
               "usd_per_hour": c.usd_per_hour, "on_front": c.on_front, "feasible": c.feasible,
               "chosen": c.name == rec.chosen, "reasons": "; ".join(c.reasons), "warnings": "; ".join(c.warnings)})
    return t
