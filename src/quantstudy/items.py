"""One evaluated item: the record every evaluation task produces and the results store keeps.

On the ground floor because the store (floor 1) keeps these rows and the evaluate stage
(floor 4) produces them; neither may reach the other's floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ItemResult:
    """One item of one task for one model: what the model answered and whether it was right.

    `score` is the item's metric in [0, 1] (1.0/0.0 for accuracy; a fraction for IFEval's
    instruction-level accuracy; NaN-free). `correct` is `score == 1` for binary metrics and
    drives flips and McNemar. `loglik` is the chosen answer's log-likelihood where the task
    scores by likelihood (None for generative tasks).
    """

    task: str
    item_id: str
    prediction: str
    correct: bool
    score: float
    loglik: float | None = None
    tokens: int = 0
    extra: dict = field(default_factory=dict, compare=False)
