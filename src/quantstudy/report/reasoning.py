"""The chain-of-thought table: how each model reasons on the reasoning tasks (GSM8K, MATH).

Per task and model, over every stored generation (each sampled draw): mean generated tokens,
mean tokens to the final answer, how often a chain hit the token budget and how often the gold
answer appeared mid-chain and was then abandoned (`evaluate.cot` defines each). Quantization
that lengthens chains or makes models talk past right answers shows here even where accuracy
barely moves.
"""

from __future__ import annotations

from quantstudy.report.tables import Table
from quantstudy.results import StudyResults


def cot_table(results: StudyResults) -> Table:
    cols = ["task", "model", "chains", "tokens (mean)", "tokens to answer (mean)", "answered %", "hit limit %",
            "right answer abandoned %"]
    t = Table("reasoning", "Chain of thought: generated length, chains cut at the token budget, right answers "
                           "reached mid-chain then abandoned", cols)
    ev = results.evaluate
    for task, entry in (ev.tasks if ev else {}).items():
        for model, d in (getattr(entry, "cot", None) or {}).items():
            label = "BF16" if model == "baseline" else results.label(model)
            answer = "–" if d["mean_answer_tokens"] is None else f"{d['mean_answer_tokens']:.0f}"
            t.add([task, label, str(d["chains"]), f"{d['mean_tokens']:.0f}", answer, f"{100 * d['answered']:.0f}",
                   f"{100 * d['hit_limit']:.0f}", f"{100 * d['abandoned']:.0f}"],
                  {"task": task, "model": model, **d})
    return t
