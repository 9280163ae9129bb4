"""Perplexity on a text: documents joined and cut into fixed windows, mean token NLL."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], seq_len: int = 512, max_windows: int | None = None,
               batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood) over non-overlapping windows of `seq_len` tokens."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"text too short for one window of {seq_len} tokens")
    windows = torch.tensor(ids[: n * seq_len]).reshape(n, seq_len)
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        batch = windows[start:start + batch_size]
        logits = model(batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                reduction="sum")
        total += nll.item()
        count += batch[:, 1:].numel()
    return math.exp(total / count)
