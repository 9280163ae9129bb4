"""Perplexity and logit divergence on packaged text, in fixed token windows.

Windows come from `data.windows` (held-out WikiText, EOS between documents, cut into
non-overlapping windows of `seq_len` tokens). Each window is one item, so perplexity and
KL get paired intervals over windows like any other task. The engines give the
teacher-forced log-probabilities (`Engine.window_logprobs`, or a bare model through
`hf_engine.teacher_forced_logprobs`); this module only scores them.
`perplexity()` is the plain number used by the quantize tests and benchmarks.
"""

from __future__ import annotations

import math

import torch

from quantstudy.data.windows import token_windows
from quantstudy.items import ItemResult


def _batches(windows: torch.Tensor, batch_size: int):
    return (windows[start:start + batch_size] for start in range(0, len(windows), batch_size))


def _logprobs(source, windows: torch.Tensor, batch_size: int):
    """Log-probability batches from an engine, or from a bare model (tests, benchmarks)."""
    if hasattr(source, "window_logprobs"):
        return source.window_logprobs(windows, batch_size)
    from quantstudy.inference.hf_engine import teacher_forced_logprobs

    return teacher_forced_logprobs(source, windows, batch_size)


def perplexity_items(engine, windows: torch.Tensor, batch_size: int = 8, task: str = "ppl") -> list[ItemResult]:
    """One item per window: summed log-likelihood of its tokens (after the first)."""
    out = []
    for start, (batch, logp) in enumerate(zip(_batches(windows, batch_size),
                                              _logprobs(engine, windows, batch_size))):
        ll = logp.gather(-1, batch[:, 1:, None].to(logp.device)).squeeze(-1).sum(-1)
        for i, x in enumerate(ll.tolist()):
            nll = -x / (batch.shape[1] - 1)
            out.append(ItemResult(task=task, item_id=str(start * batch_size + i), prediction="", correct=False,
                                  score=math.exp(-nll), loglik=x, tokens=batch.shape[1] - 1))
    return out


def kl_items(baseline, variant, windows: torch.Tensor, batch_size: int = 8, task: str = "kl") -> list[ItemResult]:
    """Per window: mean KL(baseline || variant) over next-token distributions, and the fraction
    of positions where both engines' top-1 token agree (the item's score)."""
    out = []
    pairs = zip(_batches(windows, batch_size), _logprobs(baseline, windows, batch_size),
                _logprobs(variant, windows, batch_size))
    for start, (batch, p_log, q_log) in enumerate(pairs):
        kl = (p_log.exp() * (p_log - q_log)).sum(-1).mean(-1)
        agree = (p_log.argmax(-1) == q_log.argmax(-1)).float().mean(-1)
        for i, (k, a) in enumerate(zip(kl.tolist(), agree.tolist())):
            out.append(ItemResult(task=task, item_id=str(start * batch_size + i), prediction="", correct=a == 1.0,
                                  score=a, tokens=batch.shape[1] - 1, extra={"kl": max(k, 0.0)}))
    return out


def perplexity_of(items: list[ItemResult]) -> float:
    return math.exp(-sum(r.loglik for r in items) / sum(r.tokens for r in items))


def perplexity(model, tokenizer, texts: list[str], seq_len: int = 512, max_windows: int | None = None,
               batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood) over non-overlapping windows of `seq_len` tokens."""
    return perplexity_of(perplexity_items(model, token_windows(tokenizer, texts, seq_len, max_windows), batch_size))
