"""The evaluate report as a terminal table: task, baseline, variant, recovery [CI], flips, verdict."""

from __future__ import annotations

from rich.table import Table


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(ci) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def evaluation_table(report: dict) -> tuple[Table, list[str]]:
    table = Table(title="Accuracy: baseline vs variants (recovery = variant / baseline, 95% paired bootstrap)")
    for col, justify in (("task", "left"), ("n", "right"), ("variant", "left"), ("baseline", "right"),
                         ("variant score", "right"), ("recovery % [95% CI]", "right"), ("flips −/+", "right"),
                         ("verdict", "left")):
        table.add_column(col, justify=justify)
    notes: list[str] = []
    engines = report.get("primary", {})
    for task, entry in report["tasks"].items():
        for variant, cmp in entry["variants"].items():
            name = variant + (" (vLLM)" if engines.get(variant, "").endswith("@vllm") else "")
            if entry["metric"] == "accuracy":
                flips = f"{cmp['flips_right_to_wrong']}/{cmp['flips_wrong_to_right']}"
                table.add_row(task, str(cmp["n"]), name, _pct(cmp["baseline_mean"]), _pct(cmp["variant_mean"]),
                              _pct(cmp["recovery"]) + _ci(cmp["recovery_ci"]), flips, cmp["verdict"])
                notes.extend(f"{task} / {name}: {n}" for n in cmp["notes"])
            elif entry["metric"] == "perplexity":
                table.add_row(task, str(cmp["n"]), name, f"ppl {cmp['baseline']:.2f}", f"ppl {cmp['variant']:.2f}",
                              _pct(cmp["recovery"]) + _ci(cmp["recovery_ci"]), "", cmp["verdict"])
            else:
                table.add_row(task, str(cmp["n"]), name, "", f"KL {cmp['kl']:.4f}",
                              f"top-1 agree {_pct(cmp['top1_agreement'])}{_ci(cmp['top1_ci'])}", "", "")
    for name, agg in report.get("average", {}).items():
        table.add_row("[bold]average[/]", "", name, _pct(agg["baseline_mean"]), _pct(agg["variant_mean"]),
                      _pct(agg["recovery"]) + _ci(agg["recovery_ci"]), "", agg.get("verdict", ""))
    for name, board in report.get("leaderboard", {}).items():   # absent from older reports
        for label, agg in _board_rows(board):
            table.add_row(f"[bold]{label}[/]", "", name, _pct(agg["baseline_mean"]), _pct(agg["variant_mean"]),
                          _pct(agg["recovery"]) + _ci(agg["recovery_ci"]), "", agg.get("verdict", ""))
            notes.extend(f"{label} / {name}: {n}" for n in agg["notes"] if "near zero" in n)
    sampled = report.get("settings", {}).get("sampling")
    if sampled:   # the scores above are then not greedy ones: say how they were drawn, first
        notes.insert(0, f"sampled at temperature {sampled['temperature']:g}, top-p {sampled['top_p']:g}: code tasks "
                     f"pass@1 from {sampled['samples']} sample(s) per problem; reasoning tasks the mean of "
                     f"{sampled['seeds']} seeded run(s) (greedy at 1)")
    return table, notes


def _board_rows(board: dict) -> list[tuple[str, dict]]:
    """The leaderboard aggregates worth a row: v1 (named with the v1 tasks it lacks) and v2."""
    rows = []
    if board.get("v1"):
        missing = board.get("v1_missing") or []
        rows.append(("Open LLM v1 avg" + (f" (no {', '.join(missing)})" if missing else ""), board["v1"]))
    if board.get("v2"):
        rows.append(("v2 normalised avg", board["v2"]))
    return rows


def _gap(task: dict) -> str:
    lo, hi = task["difference_ci"]
    return f"{100 * task['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] flips {100 * task['flip_rate']:.0f}%"


def _fid(f: dict | None, part: str) -> str:
    if not f or not f.get(part):
        return "–"
    p = f[part]
    return f"KL {p['kl']['mean']:.4f} · top-1 {100 * p['top1']['mean']:.1f}% · ΔNLL {p['dnll']['mean']:+.3f}"


def served_table(report: dict) -> Table:
    """What the engine adds: served minus in-process accuracy per task (points, paired 95% CI,
    flip rate), and per-position fidelity on prompts (prefill) and generated text (decode)."""
    served = report["served"]
    table = Table(title="Served (vLLM) vs in process: accuracy points served − emulated [95% CI], and fidelity "
                        "(KL is a top-k lower bound)")
    for col in ("comparison", "task gaps", "prefill", "decode"):
        table.add_column(col)
    rows = [("noise floor: BF16 served vs in process", served["noise_floor"].get("engine")),
            ("noise floor: BF16 served, batched vs one at a time", served["noise_floor"].get("batching"))]
    rows += [(f"{name}: served vs emulated", entry) for name, entry in served["served_vs_emulated"].items()]
    for label, entry in rows:
        if entry is None:
            continue
        gaps = "; ".join(f"{t} {_gap(g)}" for t, g in entry["tasks"].items()) or "–"
        table.add_row(label, gaps, _fid(entry.get("fidelity"), "prefill"), _fid(entry.get("fidelity"), "decode"))
    return table


def chain_table(report: dict) -> Table | None:
    """Chain-of-thought diagnostics per reasoning task and model (`evaluate.cot`), or None."""
    rows = [(task, model, d) for task, entry in report["tasks"].items() for model, d in (entry.get("cot") or {}).items()]
    if not rows:
        return None
    table = Table(title="Chain of thought: length, chains cut at the token budget, right answers abandoned mid-chain")
    for col in ("task", "model", "chains", "tokens", "tokens to answer", "answered %", "hit limit %", "abandoned %"):
        table.add_column(col, justify="left" if col in ("task", "model") else "right")
    for task, model, d in rows:
        answer = "–" if d["mean_answer_tokens"] is None else f"{d['mean_answer_tokens']:.0f}"
        table.add_row(task, model, str(d["chains"]), f"{d['mean_tokens']:.0f}", answer, f"{100 * d['answered']:.0f}",
                      f"{100 * d['hit_limit']:.0f}", f"{100 * d['abandoned']:.0f}")
    return table
