"""The self-contained HTML page: inline CSS, PNG figures as data URIs, no scripts, no links out.

Every piece of text that came from a model, a user or a file goes through `esc`: generated
answers can contain `<script>` or markup, and a report is opened in a browser. The page
carries no clock time; the only dates are those in the input's provenance, so rendering
the same results twice gives the same bytes.
"""

from __future__ import annotations

import base64
import html

from quantstudy.hardware import hardware_key
from quantstudy.recommend import Recommendation
from quantstudy.report.tables import Table, num
from quantstudy.results import StudyResults

SECTIONS = (("answer", "The answer"), ("model", "Model and provenance"), ("variants", "Variants"), ("accuracy", "Accuracy"),
            ("similarity", "Text similarity"), ("performance", "Performance"),
            ("recommendation", "Recommendation"), ("preflight", "Preflight notes"))
MISSING = '<p class="missing">Not run in this study.</p>'
EXAMPLES_PER_VARIANT = 3

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.85em}caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}
.missing{color:#777;font-style:italic}.explanation{background:#f6f8fa;border-left:4px solid #2c7;padding:.6em 1em}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}.pair pre{white-space:pre-wrap;background:#fafafa;
border:1px solid #eee;padding:.5em;font-size:.85em;max-height:24em;overflow:auto}
.example{margin:1em 0 2em}.prompt{color:#555;font-size:.9em}img{max-width:100%}
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def figure(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table_html(t: Table) -> str:
    return t.html() if t.rows else MISSING


def bullet_list(items) -> str:
    items = list(items)
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>" if items else ""


def _model(results: StudyResults) -> str:
    m = results.model
    head = (f"<p><b>{esc(m.name)}</b> ({esc(m.ref)})"
            + (f", {m.params / 1e9:.2f} B parameters" if m.params else "") + "</p>")
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in results.provenance.items())
    prov_html = f"<table><caption>Provenance</caption>{rows}</table>" if rows else "<p>No provenance recorded.</p>"
    return head + bullet_list(m.notes) + prov_html


def _similarity(results: StudyResults, table: Table, png: bytes | None) -> str:
    cmp = results.compare
    if not cmp or not cmp.variants:
        return MISSING
    s = cmp.settings
    out = [f"<p>{esc(s.get('n_prompts', '?'))} prompts, greedy decoding, at most {esc(s.get('max_new_tokens', '?'))} "
           f"new tokens. BERTScore: {esc(s.get('bertscore', 'see settings'))}.</p>", table_html(table),
           figure(png, "text similarity per variant"), _observation(results, cmp),
           "<h3>Most divergent examples</h3>"]
    for v in cmp.variants:
        for ex in v.examples[:EXAMPLES_PER_VARIANT]:
            out.append(
                f'<div class="example"><h4>{esc(results.label(v.name))} · {esc(ex["id"])} '
                f'({esc(ex.get("category", ""))}): STS {ex["sts"]:.2f}, ROUGE-L {ex["rougeL"]:.2f}, diverges at '
                f'token {esc(ex.get("first_divergence", "?"))}</h4><p class="prompt">{esc(ex["prompt"])}</p>'
                f'<div class="pair"><div><b>BF16</b><pre>{esc(ex["baseline"])}</pre></div>'
                f'<div><b>{esc(results.label(v.name))}</b><pre>{esc(ex["variant"])}</pre></div>'
                "</div></div>")
    return "".join(out)


def _observation(results: StudyResults, cmp) -> str:
    """Whether the paper's "small models change wording but keep meaning" holds, per variant."""
    from quantstudy.compare.verdict import STS_CAVEAT, paper_observation

    items = [f"{results.label(v.name)}: {paper_observation(v.aggregates).text}" for v in cmp.variants]
    return ("<h3>The paper's observation: small models change wording but keep meaning</h3>"
            + bullet_list(items) + f"<p>{esc(STS_CAVEAT)}.</p>")


def _performance(results: StudyResults, measured: Table, predicted: Table, png: bytes | None,
                 curve_png: bytes | None = None) -> str:
    out = ["<h3>Measured</h3>"]
    out += [table_html(measured), figure(png, "latency vs throughput per format")] if measured.rows else [MISSING]
    out += ["<h3>Predicted</h3>", table_html(predicted)]
    if curve_png:
        out.append(figure(curve_png, "predicted requests/s against latency on the deployment's GPUs, per format"))
    return "".join(out)


def _recommendation(rec: Recommendation | None, error: str | None, table: Table, png: bytes | None) -> str:
    if rec is None:
        return _no_recommendation(error)
    d = rec.deployment
    bars = ", ".join(f"{g} ≥ {100 * b:.1f}%" for g, b in d["min_recovery"].items()) or "none"
    cons = (f"{d['use_case']} on {d['hardware']}, {d['mode']}; latency SLO "
            f"{'none' if d['latency_slo_s'] is None else str(d['latency_slo_s']) + ' s'}; budget "
            f"{'none' if d['budget_usd_per_hour'] is None else '$' + num(d['budget_usd_per_hour']) + '/h'}; "
            f"min recovery {bars}")
    chosen = rec.candidate(rec.chosen).label if rec.chosen else "none feasible"
    return (f"<p><b>Constraints:</b> {esc(cons)}</p><p><b>Choice:</b> {esc(chosen)}</p>"
            f'<p class="explanation">{esc(rec.explanation)}</p>{bullet_list(rec.notes)}{table_html(table)}'
            + figure(png, "recovery vs queries per dollar, Pareto front"))


def preflight_notes(results: StudyResults, rec: Recommendation | None) -> list[str]:
    """Every (format, hardware) pair of the study that vLLM does not serve natively, with why."""
    from quantstudy.bench.preflight import preflight
    from quantstudy.errors import QuantstudyError
    from quantstudy.hardware import get_gpu

    seen: dict[tuple[str, str], str] = {}
    for r in results.predicted_rows():
        if r.status != "native" and r.note:
            seen.setdefault((r.fmt, r.hardware), f"{r.status}: {r.note}")
    pairs = [(c.fmt, rec.deployment["hardware"]) for c in rec.candidates] if rec else []
    bench_hw = hardware_key(results.bench.hardware if results.bench else None)
    pairs += [(v.format.lower(), bench_hw) for v in results.variants if bench_hw]
    for fmt, hw in pairs:
        if (fmt, hw) in seen:
            continue
        try:
            s = preflight(fmt, get_gpu(hw))
        except QuantstudyError:
            continue  # not a catalogue GPU (a CPU bench host): the bench itself is the evidence
        if s.status != "native":
            seen[(fmt, hw)] = f"{s.status}: {s.reason}"
    return [f"{fmt} on {hw} — {note}" for (fmt, hw), note in seen.items()]


def _no_recommendation(error: str | None) -> str:
    return f'<p class="missing">{esc(error or "No deployment constraints given: nothing to recommend.")}</p>'


def _answer(rec: Recommendation | None, error: str | None, table: Table, adaptive: list[str]) -> str:
    """The decision first: the explanation leads with what is resolved and how sure."""
    if rec is None:
        return _no_recommendation(error)
    return (f'<p class="explanation">{esc(rec.explanation)}</p>{table_html(table)}'
            "<p>Decision: <i>meets (accuracy)</i> -- the whole 95% recovery interval is above the floor; <i>meets "
            "(fidelity)</i> -- accuracy is unresolved at this sample size and KL, top-1 agreement and perplexity "
            "recovery are all resolved close to BF16; <i>unresolved</i> -- neither, with (→N) the items per task "
            "that would resolve it at the spread seen; <i>below</i> -- the whole interval is under the floor. A "
            "recovery above 100% is no measurable loss, not a gain.</p>" + bullet_list(adaptive))


def render(results: StudyResults, rec: Recommendation | None, rec_error: str | None, tables: dict[str, Table],
           figures: dict[str, bytes | None], accuracy_notes: list[str], engine_notes: list[str] = ()) -> str:
    from quantstudy.report.answer import adaptive_lines

    model = results.model.name
    ev = results.evaluate
    accuracy = (table_html(tables["accuracy"]) + figure(figures["recovery"], "recovery per task with 95% intervals")
                + (table_html(tables["served"]) if tables["served"].rows else "")
                + (table_html(tables["reasoning"]) if "reasoning" in tables and tables["reasoning"].rows else "")
                + (("<h3>Engines</h3>" + bullet_list(engine_notes)) if engine_notes else "")
                + (("<h3>Notes</h3>" + bullet_list(accuracy_notes)) if accuracy_notes else "")) if ev else MISSING
    pre = preflight_notes(results, rec)
    body = {
        "answer": _answer(rec, rec_error, tables["answer"], adaptive_lines(results)),
        "model": _model(results),
        "variants": table_html(tables["variants"]),
        "accuracy": accuracy,
        "similarity": _similarity(results, tables["similarity"], figures["similarity"]),
        "performance": _performance(results, tables["performance_measured"], tables["performance_predicted"],
                                    figures["latency_throughput"], figures.get("predicted_curve")),
        "recommendation": _recommendation(rec, rec_error, tables["recommendation"], figures["pareto"]),
        "preflight": bullet_list(pre) if pre else "<p>Every format considered runs natively on its hardware.</p>",
    }
    toc = " · ".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in SECTIONS)
    sections = "".join(f'<section id="{key}"><h2>{esc(title)}</h2>{body[key]}</section>' for key, title in SECTIONS)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>quantstudy report: {esc(model)}'
            f"</title><style>{CSS}</style></head><body><h1>quantstudy report: {esc(model)}</h1>"
            f"<nav>{toc}</nav>{sections}</body></html>\n")
