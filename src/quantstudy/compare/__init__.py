"""Compare stage: how a quantized model's generated text differs from the baseline's.

`generate` (cached greedy generations of the packaged prompt set, `data.prompts`),
`metrics` (ROUGE, BERTScore, STS, exact match, first divergence; bootstrap aggregates),
`verdict` (does the paper's "wording changes, meaning kept" hold for a variant), `runner`
(`compare_models`, `compare_table`, `side_by_side`, `run_compare_cli`).

Names are re-exported lazily: importing the package must not pull in torch or the scorers.
"""

from importlib import import_module

_EXPORTS = {
    "compare_models": "runner", "compare_table": "runner", "side_by_side": "runner",
    "run_compare_cli": "runner", "TextSimilarity": "metrics", "aggregate": "metrics",
    "first_divergence": "metrics", "generate_cached": "generate", "paper_observation": "verdict", "observation_summary": "verdict",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"quantstudy.compare.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'quantstudy.compare' has no attribute {name!r}")
