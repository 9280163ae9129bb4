"""Chain-of-thought diagnostics: how a model reasons, not only whether it ends right.

A 2026 study of quantized reasoning models (arXiv 2606.00206) finds aggressive quantization
lengthens chains of thought, and that the right answer is often reached mid-chain and then
abandoned. Per generation (each sampled draw too) we keep:

* `tokens`: generated tokens; `hit_limit`: generation stopped at the token budget (the chain
  did not finish);
* `answer_tokens`: tokens up to the end of the final answer statement, estimated as
  `tokens x` the share of characters before it (no tokenizer at scoring time); None when the
  chain states no final answer;
* `abandoned`: the final answer is wrong (or missing), yet the gold answer appeared earlier in
  the chain -- as a number (GSM8K: every number in the text, normalised as lm-eval's strict
  match) or as a math expression (MATH: every `$...$` span and `\\boxed{}` content, normalised
  by lm-eval's `normalize_final_answer`, compared as strings).

Aggregates per task and model (`summarize`): mean generated tokens, mean tokens to the answer,
the share of chains that hit the limit and the share that abandoned a right answer, over every
stored draw. Items stored before these diagnostics existed are left out and counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
MATH_SPAN = re.compile(r"\$([^$]+)\$")


def chain(text: str, num_tokens: int, max_new_tokens: int, answer_end: int | None, correct: bool,
          seen_before: Callable[[str, int], bool]) -> dict:
    """One generation's diagnostics. `answer_end`: character offset where the final answer
    statement ends (None: no final answer); `seen_before(text, offset)`: the gold answer occurs
    in `text[:offset]`."""
    cut = answer_end if answer_end is not None else len(text)
    answer_tokens = None
    if answer_end is not None:
        answer_tokens = round(num_tokens * answer_end / len(text)) if text else 0
    return {"tokens": int(num_tokens), "hit_limit": bool(num_tokens >= max_new_tokens),
            "answer_tokens": answer_tokens, "abandoned": bool(not correct and seen_before(text, cut))}


def number_seen(gold: str, normalise: Callable[[str], str]) -> Callable[[str, int], bool]:
    """GSM8K: the gold number occurs among the chain's numbers before `offset`."""
    def seen(text: str, offset: int) -> bool:
        return any(normalise(m.group(0)).rstrip(".") == gold for m in NUMBER.finditer(text[:offset]))
    return seen


def expression_seen(gold: str, normalise: Callable[[str], str]) -> Callable[[str, int], bool]:
    """MATH: the gold expression occurs as a `$...$` span or `\\boxed{}` content before `offset`."""
    def seen(text: str, offset: int) -> bool:
        head = text[:offset]
        spans = [m.group(1) for m in MATH_SPAN.finditer(head)]
        spans += re.findall(r"\\boxed\{([^{}]*)\}", head)
        for span in spans:
            candidates = [span, span.split("=")[-1]] if "=" in span else [span]   # "$x = 5$" states 5
            if any(safely(normalise, c) == gold for c in candidates):
                return True
        return False
    return seen


def safely(normalise, text: str) -> str | None:
    try:
        return normalise(text)
    except Exception:   # lm-eval's normaliser on arbitrary model text: a failure is "not this answer"
        return None


def summarize(items: Iterable) -> dict | None:
    """Task-level aggregates over every generation (every draw of a sampled item)."""
    chains, missing = [], 0
    for item in items:
        extra = item.extra if hasattr(item, "extra") else item.get("extra", {})
        found = extra.get("cot_draws") or ([extra["cot"]] if "cot" in extra else None)
        if not found:
            missing += 1
            continue
        chains.extend(found)
    if not chains:
        return None
    answered = [c["answer_tokens"] for c in chains if c["answer_tokens"] is not None]
    n = len(chains)
    return {"chains": n, "items_without": missing,
            "mean_tokens": sum(c["tokens"] for c in chains) / n,
            "mean_answer_tokens": sum(answered) / len(answered) if answered else None,
            "answered": len(answered) / n,
            "hit_limit": sum(c["hit_limit"] for c in chains) / n,
            "abandoned": sum(c["abandoned"] for c in chains) / n}


def draws(group: Sequence) -> list[dict] | None:
    """The per-draw diagnostics of one sampled item's draw results, where they have them."""
    found = [r.extra.get("cot") for r in group]
    return found if all(found) else None
