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
    for task, entry in report["tasks"].items():
        for name, cmp in entry["variants"].items():
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
    return table, notes
