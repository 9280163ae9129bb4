"""Token windows and streams cut from packaged WikiText, for every stage that needs text of a
given length: perplexity windows, RULER haystacks, bench prompts of an exact token count.

They take the model's tokenizer (windows are measured in its tokens) and nothing else.
"""

from __future__ import annotations

from functools import lru_cache

from quantstudy.data.text import heldout_texts, wikitext_texts


def token_windows(tokenizer, texts: list[str], seq_len: int = 512, max_windows: int | None = None):
    """Documents joined (EOS between them) and cut into non-overlapping windows: [n, seq_len]."""
    import torch

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


def heldout_windows(tokenizer, seq_len: int = 512, source: str = "wikitext"):
    """Windows of a pool's held-out tail (never calibrated on): perplexity and KL items."""
    return token_windows(tokenizer, heldout_texts(source), seq_len)


def haystack_ids(tokenizer) -> list[int]:
    """Held-out WikiText as one token stream, each sentence after a space: RULER's haystack."""
    ids: list[int] = []
    for text in wikitext_texts(heldout=True):
        ids.extend(tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"])
    return ids


@lru_cache(maxsize=4)
def prose_stream(tokenizer) -> tuple[int, ...]:
    """Both halves of WikiText as one token stream: natural text for synthetic bench prompts,
    so they exercise the tokenizer and attention like real input, not one repeated token."""
    text = "\n".join(wikitext_texts() + wikitext_texts(heldout=True))
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
