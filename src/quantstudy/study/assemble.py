"""Stored job results -> the typed study results (`quantstudy.results.StudyResults`) that
`recommend` and `report` read; the terminal summary.

Nothing here runs a model or reads a clock: the results are a function of stored results, so
a resumed study and an uninterrupted one produce the same file (bench timings included,
since they are read from the store, not re-measured).
"""

from __future__ import annotations

import math
from pathlib import Path

from quantstudy.bench.plan import FALLBACK_OUTPUT_TOKENS
from quantstudy.results import BASELINE, StudyResults

ALGORITHMS = {"rtn": "RTN", "gptq": "GPTQ", "awq": "AWQ"}
SECTIONS = {"quantize": "variants", "evaluate": "accuracy", "compare": "text similarity", "bench": "performance",
            "predict": "performance (predicted)"}


def _float_params(folder: Path) -> int:
    """Parameters stored in the baseline's safetensors (its BF16 size is twice this)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="pt") as fh:
            for key in fh.keys():
                total += math.prod(fh.get_slice(key).get_shape())
    return total


def variant_label(rec: dict) -> str:
    recipe = rec.get("recipe") or {}
    algo = ALGORITHMS.get(rec.get("algorithm"), str(rec.get("algorithm")))
    if recipe.get("smoothquant") is not None:
        algo = f"SQ {recipe['smoothquant']:g} + {algo}"
    return f"{rec['label']} {algo}"


def _interval_note(evaluation) -> str | None:
    """How wide the recovery intervals are at this limit: what a small study costs in certainty."""
    widths = [(c.recovery_ci[1] - c.recovery_ci[0]) / 2 for e in evaluation.tasks.values()
              if e.metric == "accuracy" for c in e.variants.values() if c.recovery_ci]
    if not widths:
        return None
    widths.sort()
    limit = evaluation.settings.get("limit")
    return (f"evaluate: {limit or 'all'} items per task; per-task recovery intervals are ±{100 * widths[len(widths) // 2]:.1f} "
            f"points (median half-width, 95% paired bootstrap), so only larger losses are resolved")


def assemble(cfg, base_folder: Path, model_fp: str, started: str, quantized: dict, evaluation, comparison, bench,
             predicted: dict, failures: list) -> StudyResults:
    """The study's results from its stored job records (JSON), typed."""
    from quantstudy.compare.records import ComparisonReport
    from quantstudy.evaluate.summary import EvaluationReport
    from quantstudy.serial import from_json
    from quantstudy.store import provenance

    evaluation = from_json(EvaluationReport, evaluation, "the stored evaluation") if evaluation else None
    comparison = from_json(ComparisonReport, comparison, "the stored comparison") if comparison else None
    params = _float_params(base_folder)
    bf16_bytes = 2 * params
    variants = []
    for v in cfg.variants:
        rec = quantized.get(v.name)
        if rec is None:
            continue
        variants.append({"name": v.name, "format": rec["format"], "label": variant_label(rec),
                         "algorithm": ALGORITHMS.get(rec["algorithm"], rec["algorithm"]), "recipe": rec["recipe"],
                         "calibration": rec["calibration"], "group_size": rec["group_size"],
                         "size_bytes": rec["tensor_bytes"], "size_vs_bf16": rec["tensor_bytes"] / bf16_bytes,
                         "sqnr_db": rec["sqnr_db"], "checkpoint": rec["folder"], "fingerprint": rec["fingerprint"]})
    notes = [f"FAILED — {SECTIONS.get(f['stage'], f['stage'])}: {f['stage']} {f['name']}: {f['error']} "
             "(rerun the study to retry; finished jobs are kept)" for f in failures]
    notes += _source_notes(base_folder)
    interval = _interval_note(evaluation) if evaluation else None
    if interval:
        notes.append(interval)
    if comparison and comparison.variants:
        from quantstudy.compare.verdict import observation_summary

        labels = {v["name"]: v["label"] for v in variants}
        summary = observation_summary([(labels.get(v.name, v.name), v.aggregates) for v in comparison.variants])
        if summary:
            notes.append("text similarity: " + summary)
    if bench:
        notes += [f"bench: {s['fmt']} not served on {bench['hardware']}: {s['reason']}" for s in bench["skipped"]]
        notes += [f"bench: {e['fmt']} is only emulated on {bench['hardware']} ({e['reason']}): measured with "
                  f"{sum(e['requests'].values())} synchronous request(s) of at most {FALLBACK_OUTPUT_TOKENS} output "
                  "tokens, no concurrent load" for e in bench.get("emulated", [])]
        if any(m.get("scale", 1.0) != 1.0 for m in bench["measured"]):
            notes.append(f"bench: use cases shrunk to scale {cfg.bench.scale:g} to fit this machine; measured "
                         "figures show relative speed, costs come from the roofline predictions")
    prov = {k: v for k, v in provenance().items() if k != "time"}
    return StudyResults.from_json({
        "model": {"ref": cfg.model, "name": cfg.model, "params": params, "fingerprint": model_fp, "notes": notes},
        "variants": variants,
        "evaluate": evaluation,
        "compare": comparison,
        "bench": bench,
        "predicted": predicted.get("rows", []),
        "curves": predicted.get("curves", []),
        "deployment": _deployment(cfg),
        "provenance": {**prov, "started": started, "config": cfg.source},
        "failures": failures,
    })


def _source_notes(folder: Path) -> list[str]:
    """What the baseline's own origin means for the results (the embedded model is a GGUF)."""
    source = folder / "SOURCE"
    if not source.is_file() or "Q4_1" not in source.read_text():
        return []
    return ["model: the baseline was dequantized from a Q4_1 GGUF, so every linear weight already lies on a "
            "4-bit asymmetric group-32 grid (float scale and offset). INT4 asymmetric g32 RTN recovers each "
            "group's step exactly, and would be lossless but for compressed-tensors' integer zero point "
            "(~22 dB SQNR, tests/test_models.py); the study's W4A16 (symmetric, group 64: 576 is not a "
            "multiple of 128) is not aligned with that grid. A model trained in BF16 has no such grid: "
            "4-bit results here are not a forecast for one"]


def _deployment(cfg) -> dict | None:
    if not cfg.deployment:
        return None
    dep = dict(vars(cfg.deployment))
    if dep["hardware"] == "cpu":   # the measured entry's name ('cpu' or 'cpu-amx'), as predictions carry it
        from quantstudy.bench.cpu import measure_cpu

        dep["hardware"] = measure_cpu().name
    return dep


def write_outputs(results: StudyResults, out: Path) -> Path:
    """results.json (what `quantstudy report` rebuilds from) and the report folder."""
    import shutil

    from quantstudy.report import build_report

    report_dir = out / "report"
    paths = build_report(results, report_dir)
    # The report's copy is strict JSON (NaN -> null) plus the recommendation, which
    # `quantstudy report` recomputes anyway: the same file serves both.
    shutil.copyfile(paths["results.json"], out / "results.json")
    return report_dir


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def summary_table(results: StudyResults, rec):
    """One row per model: size, accuracy recovery, similarity, measured and predicted cost.
    Narrow enough for an 80-column terminal; the report has the full tables."""
    from rich.table import Table

    dep = results.deployment
    table = Table(title=f"quantstudy: {results.model.name}")
    cols = ["variant", "size", "recovery %", "STS", f"E2E s {results.bench.hardware if results.bench else ''}"]
    if rec:
        cols += [f"q/$ {dep.hardware if dep else None}", "pick"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("variant", "pick") else "right", no_wrap=c == "variant")
    sts = {v.name: v.aggregates.sts.mean for v in (results.compare.variants if results.compare else ())}
    e2e = {}
    for p in results.measured_points():
        if p.mode == "sync":
            e2e.setdefault(p.fmt, p.e2e_median_s)
    rows = [(BASELINE, "bf16", 1.0)] + [(v.name, v.format, v.size_vs_bf16) for v in results.variants]
    for name, fmt, size in rows:
        r, ci, _ = results.accuracy_of(name)
        acc = _pct(r) + (f" [{_pct(ci[0])},{_pct(ci[1])}]" if ci and name != BASELINE else "")
        row = [name, f"{size:.2f}×", acc if results.evaluate else "–", f"{sts[name]:.3f}" if name in sts else "–",
               f"{e2e[fmt]:.2f}" if e2e.get(fmt) is not None else "–"]
        if rec:
            c = rec.candidate(name)
            mark = "chosen" if rec.chosen == name else ("ok" if c.feasible else "no")
            row += [f"{c.queries_per_usd:,.0f}" if c.queries_per_usd else "–", mark]
        table.add_row(*row)
    return table


def print_summary(outcome, console) -> None:
    from quantstudy.errors import QuantstudyError
    from quantstudy.recommend import recommend

    results = outcome.results
    rec = None
    if results.deployment:
        try:
            rec = recommend(results)
        except QuantstudyError as exc:
            console.print(f"[yellow]no recommendation:[/] {exc}", highlight=False)
    console.print(summary_table(results, rec))
    if rec:
        console.print(f"[bold]recommendation:[/] {rec.explanation}", highlight=False)
    for note in results.model.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"report: {outcome.report_dir / 'report.html'}")
