"""The roofline against published vLLM measurements: fitted on one third, validated on the rest.

Reads src/quantstudy/bench/data/vllm_published.json (each cell: model shape, format, GPU
and count, workload, metric, value, source, quote), splits it by position
(`roofline_validation.split`: every third cell of a fixed order -- chosen before any error
was seen), refits the four GPU constants on the fit third, checks they are the shipped ones
(`roofline_constants`), and prints per-cell errors for both sets, their medians per kind
(latency: sync end-to-end, TTFT, TPOT; throughput: requests/s, output tok/s), the worst
validation cells with their sources, and the paper's four A6000 latencies (not in the cells:
out of sample too).

Usage: .venv/bin/python benchmarks/roofline_validation.py [--all] [--json OUT.json]
Goals (issue 17): validation median |error| <= 20% for latency, <= 30% for throughput.
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from quantstudy.bench import roofline_validation as V
from quantstudy.bench.roofline import predict
from quantstudy.bench.roofline_constants import (COMPUTE_SCALE, DECODE_BW_EFF, GPU_FACTORS, LAYER_OVERHEAD_S,
                                                 PAPER_SYNC_POINTS, STEP_OVERHEAD_S)
from quantstudy.models.shape import ModelShape

GOALS = {"latency": 0.20, "throughput": 0.30}


def cell_table(title: str, cells: list, show: int | None = None) -> Table:
    t = Table(title=title)
    for col in ("cell", "model", "format", "GPUs", "metric", "workload", "measured", "predicted", "error", "source"):
        t.add_column(col, justify="right" if col in ("GPUs", "measured", "predicted", "error") else "left")
    rows = sorted(cells, key=lambda c: -abs(V.relative_error(c)))
    for c in rows[:show] if show else rows:
        load = "sat." if c.concurrency is None else f"c={c.concurrency}"
        t.add_row(c.id, c.model.removeprefix("llama-3.1-"), c.format, f"{c.gpus}x {c.gpu}", c.metric,
                  f"{c.prompt_tokens}/{c.output_tokens} {load}", f"{c.value:g}", f"{V.predict_cell(c):.3g}",
                  f"{100 * V.relative_error(c):+.0f}%", c.source.split("//")[-1][:60])
    return t


def medians(cells: list) -> dict[str, tuple[int, float]]:
    out = {}
    for kind in ("latency", "throughput"):
        errs = [V.relative_error(c) for c in cells if c.kind == kind]
        out[kind] = (len(errs), V.median_abs(errs))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="print every cell of both sets (default: the worst 10)")
    ap.add_argument("--json", help="write every cell's measured and predicted value here")
    args = ap.parse_args()
    console = Console(width=200)
    cells = V.load_cells()
    fit, val = V.split(cells)
    refit = V.fit_gpu_factors(fit)
    shipped = (DECODE_BW_EFF, STEP_OVERHEAD_S, LAYER_OVERHEAD_S, COMPUTE_SCALE)
    console.print(f"{len(cells)} usable cells: {len(fit)} fit, {len(val)} validation. Refit on the fit third: "
                  f"bandwidth efficiency {refit[0]:.3f}, step overhead {refit[1] * 1e3:.3f} ms, per-layer "
                  f"{refit[2] * 1e6:.1f} us, compute scale {refit[3]:.3f} (shipped: {shipped[0]:.3f}, "
                  f"{shipped[1] * 1e3:.3f} ms, {shipped[2] * 1e6:.1f} us, {shipped[3]:.3f})")
    drift = any(abs(a - b) > 0.01 * max(abs(b), 1e-6) for a, b in zip(refit, shipped))
    if drift:
        console.print("[red]the shipped constants are not the fit of the fit third: update roofline_constants[/]")
    console.print(cell_table("Fit set (in sample)", fit, None if args.all else 10))
    console.print(cell_table("Validation set (out of sample)", val, None if args.all else 10))
    summary = Table(title="Median |predicted / measured - 1|")
    for col in ("set", "latency cells", "latency", "throughput cells", "throughput"):
        summary.add_column(col, justify="left" if col == "set" else "right")
    for name, cs in (("fit (in sample)", fit), ("validation (out of sample)", val)):
        m = medians(cs)
        summary.add_row(name, str(m["latency"][0]), f"{100 * m['latency'][1]:.1f}%", str(m["throughput"][0]),
                        f"{100 * m['throughput'][1]:.1f}%")
    console.print(summary)
    shape = ModelShape.known("llama-3.1-8b")
    paper = [(fmt, uc, obs, predict(shape, fmt, "a6000", uc, gpus=1).latency_s) for fmt, uc, obs in PAPER_SYNC_POINTS]
    console.print("The paper's Llama-3.1-8B 1xA6000 sync latencies (not among the cells): " + "; ".join(
        f"{fmt} {uc} {obs} s vs {p:.1f} s ({100 * (p / obs - 1):+.0f}%)" for fmt, uc, obs, p in paper))
    m = medians(val)
    ok = all(m[k][1] <= GOALS[k] for k in GOALS)
    console.print(f"validation goals (latency <= 20%, throughput <= 30%): {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"fit": [c.id for c in fit], "factors": GPU_FACTORS.__dict__ | {"compute_eff": GPU_FACTORS.compute_eff},
                       "cells": [{"id": c.id, "set": "fit" if c in fit else "validation", "measured": c.value,
                                  "predicted": V.predict_cell(c)} for c in cells]}, fh, indent=1, default=str)
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
