"""What a caller asks of a language model, what comes back, and the `Engine` protocol.

Request semantics are lm-eval's: a log-likelihood request is a context and a continuation,
a generation request is a prompt with stop strings. Windows of token ids are scored for
perplexity and divergence. Every engine (the in-process one, `hf_engine.HFEngine`; the vLLM
one of a later floor plan) answers the same requests, so the evaluate, compare and bench
stages never know which engine produced a number -- the result records say so instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
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
    num_tokens: int                 # generated tokens before the cut
    # ids of those tokens where the engine knows them (first-divergence needs ids, not text);
    # None where it does not (an endpoint that returns text only)
    tokens: tuple[int, ...] | None = None


class Engine(Protocol):
    """What the stages need from a model. Implementations batch, share prefixes and cache."""

    def loglikelihood(self, requests: list[LoglikRequest]) -> list[Loglik]: ...

    def generate(self, requests: list[GenerateRequest]) -> list[Generation]: ...

    def window_logprobs(self, windows, batch_size: int) -> Iterator:
        """Per batch of token windows [B, T]: float32 log-probabilities of every next token,
        [B, T-1, vocab] (teacher forcing), for perplexity and divergence."""
        ...
