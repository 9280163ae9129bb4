"""Perplexity and logit divergence on packaged text, in fixed token windows.

Documents are joined (EOS between them) and cut into non-overlapping windows of
`seq_len` tokens. Each window is one item, so perplexity and KL get paired intervals
over windows like any other task. `perplexity()` is the plain number used by the
quantize tests and benchmarks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from quantstudy.evaluate.records import ItemResult


def token_windows(tokenizer, texts: list[str], seq_len: int = 512, max_windows: int | None = None) -> torch.Tensor:
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"text too short for one window of {seq_len} tokens")
    return torch.tensor(ids[: n * seq_len]).reshape(n, seq_len)


def _log_probs(model, batch: torch.Tensor) -> torch.Tensor:
    """(B, T-1, V) float32 log-probabilities of each next token."""
    return F.log_softmax(model(batch).logits[:, :-1].float(), dim=-1)


@torch.inference_mode()
def perplexity_items(model, windows: torch.Tensor, batch_size: int = 8, task: str = "ppl") -> list[ItemResult]:
    """One item per window: summed log-likelihood of its tokens (after the first)."""
    out = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        logp = _log_probs(model, batch).gather(-1, batch[:, 1:, None]).squeeze(-1).sum(-1)
        for i, ll in enumerate(logp.tolist()):
            nll = -ll / (batch.shape[1] - 1)
            out.append(ItemResult(task=task, item_id=str(start + i), prediction="", correct=False,
                                  score=math.exp(-nll), loglik=ll, tokens=batch.shape[1] - 1))
    return out


@torch.inference_mode()
def kl_items(baseline, variant, windows: torch.Tensor, batch_size: int = 8, task: str = "kl") -> list[ItemResult]:
    """Per window: mean KL(baseline || variant) over next-token distributions, and the fraction
    of positions where both models' top-1 token agree (the item's score)."""
    out = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        p_log, q_log = _log_probs(baseline, batch), _log_probs(variant, batch)
        kl = (p_log.exp() * (p_log - q_log)).sum(-1).mean(-1)
        agree = (p_log.argmax(-1) == q_log.argmax(-1)).float().mean(-1)
        for i, (k, a) in enumerate(zip(kl.tolist(), agree.tolist())):
            out.append(ItemResult(task=task, item_id=str(start + i), prediction="", correct=a == 1.0,
                                  score=a, tokens=batch.shape[1] - 1, extra={"kl": max(k, 0.0)}))
    return out


def perplexity_of(items: list[ItemResult]) -> float:
    return math.exp(-sum(r.loglik for r in items) / sum(r.tokens for r in items))


def perplexity(model, tokenizer, texts: list[str], seq_len: int = 512, max_windows: int | None = None,
               batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood) over non-overlapping windows of `seq_len` tokens."""
    return perplexity_of(perplexity_items(model, token_windows(tokenizer, texts, seq_len, max_windows), batch_size))
