"""The one paired bootstrap: resampled item indices and percentile intervals.

Every interval quantstudy prints (accuracy recovery, perplexity ratio, KL, top-1
agreement, text similarity) resamples *items* with replacement and applies the same
indices to every quantity that is compared, so shared item difficulty stays in both sides
of a ratio: that pairing is what makes the intervals honest and tight.

Indices are drawn in blocks of at most `BLOCK_ELEMENTS`, so n_bootstrap x n indices never
sit in memory at once (MMLU has ~14k items; 2000 x 14k int64 would be ~220 MB). Blocks
are drawn one after another from the caller's generator, so a seed fixes every replicate.

Intervals are percentile intervals at (1 - c)/2 and (1 + c)/2, computed once here (for
c = 0.95: the doubles nearest 0.025 and 0.975), so two stages never disagree in the last
digit about the same quantile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from quantstudy.errors import QuantstudyError

N_BOOTSTRAP = 2000
CONFIDENCE = 0.95
BLOCK_ELEMENTS = 2_000_000


def check(n: int, n_bootstrap: int, confidence: float = CONFIDENCE) -> None:
    if n < 1:
        raise QuantstudyError("nothing to resample: no items")
    if n_bootstrap < 1:
        raise QuantstudyError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0 < confidence < 1:
        raise QuantstudyError(f"confidence must be between 0 and 1, got {confidence}")


def index_blocks(n: int, n_bootstrap: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Resampled item indices, (rows, n) per block, n_bootstrap rows in all."""
    check(n, n_bootstrap)
    block = max(1, BLOCK_ELEMENTS // n)
    for start in range(0, n_bootstrap, block):
        yield rng.integers(0, n, size=(min(n_bootstrap, start + block) - start, n))


def indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """All (n_bootstrap, n) resampled indices of a seed at once, for small n."""
    return np.concatenate(list(index_blocks(n, n_bootstrap, np.random.default_rng(seed))))


def replicates(stat: Callable[[np.ndarray], np.ndarray], n: int, n_bootstrap: int,
               rng: np.random.Generator) -> np.ndarray:
    """stat(indices) over every block, concatenated: one row (or value) per replicate."""
    return np.concatenate([stat(idx) for idx in index_blocks(n, n_bootstrap, rng)])


def nested_means(draws: Sequence[np.ndarray], n_bootstrap: int, rng: np.random.Generator,
                 inner_rng: np.random.Generator) -> np.ndarray:
    """Two-level replicates for items that each have k draws (samples, seeded runs): `draws`
    are (n, k) arrays over the same n items (baseline and variant). Each replicate resamples
    items -- the very indices `index_blocks` draws from `rng`, so with identical draws it is
    the one-level bootstrap exactly -- then, for each drawn item, its k draws with replacement
    (from `inner_rng`), the same draw indices for every array (a seed pairs like an item does).
    Returns (n_bootstrap, len(draws)): the mean over items of each item's resampled draw mean.
    """
    n, k = draws[0].shape
    if any(d.shape != (n, k) for d in draws):
        raise QuantstudyError("two-level bootstrap: every array needs the same items and draws")
    out = []
    for idx in index_blocks(n, n_bootstrap, rng):
        rows = max(1, BLOCK_ELEMENTS // (n * k))   # bound the (rows, n, k) index block in memory
        for start in range(0, len(idx), rows):
            outer = idx[start:start + rows, :, None]
            inner = inner_rng.integers(0, k, size=(len(outer), n, k))
            out.append(np.stack([d[outer, inner].mean(axis=2).mean(axis=1) for d in draws], axis=1))
    return np.concatenate(out)


def quantiles(confidence: float = CONFIDENCE) -> tuple[float, float]:
    # rounded so 0.95 gives exactly the doubles nearest 0.025 and 0.975, however it is spelt
    return round((1 - confidence) / 2, 12), round((1 + confidence) / 2, 12)


def interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    lo, hi = np.quantile(values, quantiles(confidence))
    return float(lo), float(hi)


def mean_interval(values: Sequence[float], idx: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Mean and percentile-bootstrap interval over resampled items (`idx` from `indices`).
    The percentile interval of a mean always brackets it up to rounding; that rounding is
    clamped, so an interval never excludes its own point estimate."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = interval(x[idx].mean(axis=1), confidence)
    mean = float(x.mean())
    return {"mean": mean, "ci": [float(min(lo, mean)), float(max(hi, mean))]}
