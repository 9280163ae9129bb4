"""Floor 7, report: typed study results -> report.html, tables/*.md|csv, results.json.

Reads only the study results (evaluate, compare, bench and predicted parts plus the
deployment constraints) and the recommendation computed from them; it never runs a model,
so a report can be rebuilt anywhere from the JSON alone. Modules: `tables` (rows for
people and for machines), `plots` (PNG figures), `html` (the page).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["build_report"]

TABLES = ("answer", "accuracy", "served", "reasoning", "similarity", "performance_measured", "performance_predicted", "recommendation")


def _clean(value):
    """Strict JSON: NaN/inf (a bench run with no successful request) become null; tuples lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_report(results, out_dir: str | Path) -> dict[str, Path]:
    """Write the report files under `out_dir`; returns {relative name: path} of everything written.
    `results`: typed `StudyResults`, or a results dict (a results.json's content)."""
    from quantstudy.errors import QuantstudyError
    from quantstudy.recommend import recommend
    from quantstudy.report import html, plots, tables
    from quantstudy.report.answer import answer_table, grouped_notes
    from quantstudy.report.reasoning import cot_table
    from quantstudy.results import StudyResults

    results = StudyResults.from_json(results)
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    rec, rec_error = None, None
    if results.deployment:
        try:
            rec = recommend(results)
        except QuantstudyError as exc:  # bad constraints: the rest of the report still stands
            rec_error = f"No recommendation: {exc}"
    built = {
        "answer": answer_table(results, rec), "variants": tables.variants_table(results), "accuracy": tables.accuracy_table(results),
        "served": tables.served_table(results), "reasoning": cot_table(results),
        "similarity": tables.similarity_table(results), "performance_measured": tables.measured_table(results),
        "performance_predicted": tables.predicted_table(results), "recommendation": tables.recommendation_table(rec),
    }
    figures = {"recovery": plots.recovery_plot(results), "similarity": plots.similarity_plot(results),
               "latency_throughput": plots.latency_throughput_plot(results), "pareto": plots.pareto_plot(rec),
               "predicted_curve": plots.predicted_curve_plot(results)}
    paths: dict[str, Path] = {}

    def write(name: str, text: str) -> None:
        path = out / name
        path.write_text(text, encoding="utf-8")
        paths[name] = path

    for name in TABLES:
        t = built[name]
        write(f"tables/{name}.md", t.markdown() if t.rows else f"### {t.title}\n\nNot run in this study.\n")
        write(f"tables/{name}.csv", t.csv() if t.records else ",".join(t.columns) + "\n")
    full = {**results.to_json(), "recommendation": rec.to_dict() if rec else None}
    write("results.json", json.dumps(_clean(full), indent=1, allow_nan=False) + "\n")
    write("report.html", html.render(results, rec, rec_error, built, figures, grouped_notes(tables.accuracy_notes(results)),
                                     tables.engines_notes(results)))
    return paths
