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

import torch


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
    """Continuation of `prompt`, cut at the first stop string (not included): greedy at
    temperature 0, else sampled with `top_p` from a generator seeded with `seed`."""

    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    num_tokens: int                 # generated tokens before the cut
    # ids of those tokens where the engine knows them (first-divergence needs ids, not text);
    # None where it does not (an endpoint that returns text only)
    tokens: tuple[int, ...] | None = None


@dataclass
class WindowScores:
    """Teacher-forced scores of a batch of token windows [B, T]: at each of the T-1 positions
    the log-probability of the actual next token (`target`, [B, T-1]), the engine's top-k
    (`top_ids`, `top_logprobs`, [B, T-1, k], best first; id -1 where fewer came back) and,
    where the engine has it, the whole distribution (`full`, [B, T-1, vocab])."""

    target: torch.Tensor
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    full: torch.Tensor | None = None

    @classmethod
    def from_full(cls, windows: torch.Tensor, logprobs: torch.Tensor, k: int = 20) -> "WindowScores":
        target = logprobs.gather(-1, windows[:, 1:, None].to(logprobs.device)).squeeze(-1)
        top = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        return cls(target, top.indices, top.values, logprobs)


class Engine(Protocol):
    """What the stages need from a model. Implementations batch, share prefixes and cache."""

    def loglikelihood(self, requests: list[LoglikRequest]) -> list[Loglik]: ...

    def generate(self, requests: list[GenerateRequest]) -> list[Generation]: ...

    def window_scores(self, windows, batch_size: int) -> Iterator[WindowScores]:
        """Per batch of `batch_size` token windows [B, T] (teacher forcing): `WindowScores`,
        for perplexity and divergence."""
        ...
