"""Typed records the evaluate stage exchanges: requests to a scoring backend, per-item results.

Tasks turn packaged documents into requests (lm-eval's request semantics: a log-likelihood
request is a context and a continuation, a generation request is a prompt with stop
strings), hand them to a backend, and score the answers into `ItemResult`s. The results
store keeps one `ItemResult` per (model, task, item); statistics read them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class LoglikRequest:
    """log P(continuation | context), summed over the continuation's tokens (lm-eval `loglikelihood`)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Loglik:
    logprob: float      # summed log-probability of the continuation's tokens
    is_greedy: bool     # every continuation token is the argmax at its position
    num_tokens: int     # continuation length in tokens


@dataclass(frozen=True)
class GenerateRequest:
    """Greedy continuation of `prompt`, cut at the first stop string (not included)."""

    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    text: str
    num_tokens: int     # generated tokens before the cut


class Backend(Protocol):
    """What a task needs from a model: scores and greedy text. Implementations batch and cache."""

    def loglikelihood(self, requests: list[LoglikRequest]) -> list[Loglik]: ...

    def generate(self, requests: list[GenerateRequest]) -> list[Generation]: ...


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
