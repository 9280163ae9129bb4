"""The report's figures as PNG bytes: recovery, similarity, latency-throughput, Pareto.

Figures are built with the object-oriented API on an Agg canvas (no pyplot: no global
figure state, no GUI backend, safe in threads and under pytest). Sizes, dpi, fonts (the
DejaVu fonts matplotlib ships) and colours are fixed and the PNG metadata carries no
software version, so the same input gives byte-identical images and hence HTML.
Each function returns None when its data is missing, and the report says so instead.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from quantstudy.recommend import Recommendation
from quantstudy.report.tables import SIMILARITY
from quantstudy.results import StudyResults

SIZE = (7.5, 4.2)
DPI = 100
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def _figure():
    fig = Figure(figsize=SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    # Software=None drops matplotlib's version stamp: bytes depend on the data alone.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _offsets(k: int, width: float = 0.6) -> list[float]:
    return [0.0] if k == 1 else [-width / 2 + width * i / (k - 1) for i in range(k)]


def recovery_plot(results: StudyResults) -> bytes | None:
    """Recovery per task (and the average) with 95% intervals; the 100% line is 'lossless'."""
    ev = results.evaluate
    if ev is None:
        return None
    tasks = [t for t, e in ev.tasks.items() if e.metric in ("accuracy", "perplexity")]
    rows = tasks + (["average"] if ev.average else [])
    names = [v.name for v in results.variants]
    if not rows or not names:
        return None
    fig, ax = _figure()
    for i, (name, dx) in enumerate(zip(names, _offsets(len(names)))):
        xs, ys, lo, hi = [], [], [], []
        for j, task in enumerate(rows):
            c = ev.average.get(name) if task == "average" else ev.tasks[task].variants.get(name)
            if c is None or c.recovery is None:
                continue
            ci = c.recovery_ci or (c.recovery, c.recovery)
            xs.append(j + dx)
            ys.append(100 * c.recovery)
            lo.append(100 * (c.recovery - ci[0]))
            hi.append(100 * (ci[1] - c.recovery))
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, color=COLORS[i % len(COLORS)],
                    label=results.label(name))
    ax.axhline(100, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(rows)), rows, rotation=20)
    ax.set_ylabel("recovery vs BF16 (%)")
    ax.set_title("Recovery per task with 95% intervals")
    ax.legend(fontsize=8)
    return _png(fig)


def similarity_plot(results: StudyResults) -> bytes | None:
    """ROUGE-1/L, BERTScore and STS of each variant's text against BF16's, with intervals."""
    variants = results.compare.variants if results.compare else ()
    if not variants:
        return None
    fig, ax = _figure()
    for i, (v, dx) in enumerate(zip(variants, _offsets(len(variants)))):
        stats = [v.aggregates.get(m) for m, _ in SIMILARITY]
        means = [s.mean for s in stats]
        err = [[s.mean - s.ci[0] for s in stats], [s.ci[1] - s.mean for s in stats]]
        ax.errorbar([k + dx for k in range(len(SIMILARITY))], means, yerr=err, fmt="o", capsize=3,
                    color=COLORS[i % len(COLORS)], label=results.label(v.name))
    ax.set_xticks(range(len(SIMILARITY)), [label for _, label in SIMILARITY])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("similarity to BF16 output")
    ax.set_title("Text similarity per variant (mean, 95% interval)")
    ax.legend(fontsize=8)
    return _png(fig)


def latency_throughput_plot(results: StudyResults) -> bytes | None:
    """Median end-to-end latency against requests/s, one line per format and use case through
    its load levels (sync at the left end); where lines cross, the cheaper format changes."""
    points = [p for p in results.measured_points() if p.requests_per_s and p.e2e_median_s]
    if not points:
        return None
    fig, ax = _figure()
    keys = list(dict.fromkeys((p.fmt, p.use_case) for p in points))
    formats = list(dict.fromkeys(f for f, _ in keys))
    cases = list(dict.fromkeys(u for _, u in keys))
    for fmt, case in keys:
        line = sorted((p for p in points if (p.fmt, p.use_case) == (fmt, case)), key=lambda p: p.requests_per_s)
        ax.plot([p.requests_per_s for p in line], [p.e2e_median_s for p in line],
                color=COLORS[formats.index(fmt) % len(COLORS)], linestyle=("-", "--", ":", "-.")[cases.index(case) % 4],
                marker="o", label=f"{fmt} · {case}")
        sync = [p for p in line if p.mode == "sync"]
        ax.plot([p.requests_per_s for p in sync], [p.e2e_median_s for p in sync], linestyle="none",
                marker="s", markersize=9, markerfacecolor="none", color="black")
    ax.set_xlabel("requests/s (sync: one at a time; async: concurrent load)")
    ax.set_ylabel("median end-to-end latency (s)")
    ax.set_title("Latency vs throughput per format (squares: synchronous)")
    ax.legend(fontsize=8)
    return _png(fig)


def predicted_curve_plot(results: StudyResults) -> bytes | None:
    """Predicted requests/s against a request's latency on the deployment's GPUs, one line per
    format (the best layout and load for each latency); the saturation point marked. Where the
    lines cross, the format serving most under that latency budget changes (the paper's
    crossover: 4-bit weights at tight budgets, 8-bit arithmetic at high load)."""
    curves = [c for c in results.curves if c.points]
    if not curves:
        return None
    fig, ax = _figure()
    for i, c in enumerate(curves):
        color = COLORS[i % len(COLORS)]
        ax.plot([p.latency_s for p in c.points], [p.requests_per_s for p in c.points], color=color, marker=".",
                label=c.fmt.upper())
        ax.plot([c.saturation_latency_s], [c.saturation_rps], marker="o", markersize=9, markerfacecolor="none",
                color=color, linestyle="none")
    c0 = curves[0]
    ax.set_xscale("log")
    ax.set_xlabel("latency of one request (s, log scale)")
    ax.set_ylabel("requests/s, whole deployment")
    ax.set_title(f"Predicted on {c0.gpus}x {c0.hardware}, {c0.use_case} (rings: saturation)")
    ax.legend(fontsize=8)
    return _png(fig)


def pareto_plot(rec: Recommendation | None) -> bytes | None:
    """Recovery vs queries/$: the front as a line, the chosen point ringed; circles measured,
    triangles predicted; hollow markers fail a constraint."""
    if rec is None:
        return None
    pts = [c for c in rec.candidates if c.recovery is not None and c.queries_per_usd]
    if not pts:
        return None
    fig, ax = _figure()
    for i, c in enumerate(pts):
        color = COLORS[i % len(COLORS)]
        ax.plot([c.queries_per_usd], [100 * c.recovery], linestyle="none",
                marker="o" if c.source == "measured" else "^", markersize=9, color=color,
                markerfacecolor=color if c.feasible else "none", label=f"{c.label} ({c.source})")
        if c.recovery_ci and c.name != "baseline":
            ax.plot([c.queries_per_usd] * 2, [100 * c.recovery_ci[0], 100 * c.recovery_ci[1]], color=color,
                    linewidth=1)
    front = [rec.candidate(n) for n in rec.pareto]
    ax.plot([c.queries_per_usd for c in front], [100 * c.recovery for c in front], color="black", linewidth=1,
            linestyle="--", label="Pareto front")
    if rec.chosen is not None:
        c = rec.candidate(rec.chosen)
        ax.plot([c.queries_per_usd], [100 * c.recovery], linestyle="none", marker="o", markersize=20,
                markerfacecolor="none", markeredgecolor="black", markeredgewidth=2, label="chosen")
    bar = rec.deployment["min_recovery"].get("average")
    if bar is not None:
        ax.axhline(100 * bar, color="grey", linewidth=0.8, linestyle=":", label="min recovery")
    ax.set_xlabel("queries per $" + (" (async)" if rec.deployment["mode"] == "async" else " (sync)"))
    ax.set_ylabel("average recovery (%)")
    ax.set_title(f"Recovery vs cost: {rec.deployment['use_case']} on {rec.deployment['hardware']}")
    ax.legend(fontsize=7, loc="best")
    return _png(fig)
