"""Process-level settings for a quantization run's memory (no heavy imports here: they must
run before transformers is imported to matter).
"""

from __future__ import annotations

import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc mallopt parameters


def keep_memory_returnable(threshold: int = 1 << 20) -> None:
    """Allocations past `threshold` bytes get their own memory maps, returned to the OS when
    freed. glibc otherwise raises its mmap threshold after every large free (up to 32 MiB), so
    a layer's tensors land on the heap, which does not shrink: resident memory grew by about a
    layer per layer (SmolLM2 GPTQ: +25 MiB per layer, peak 1.58 GiB; with this: 0.85 GiB,
    measured 2026-12-02). A no-op where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


def without_sklearn() -> None:
    """Keep scikit-learn out of a process that only quantizes. transformers imports
    `sklearn.metrics` (with SciPy: 145 MiB resident, 1.5 s) whenever it is installed, for
    assisted generation's confidence threshold, which quantizing never uses; we install it
    for sentence-transformers and lm-eval. Marking it absent before transformers is
    imported makes transformers see it as not installed. A no-op once it is imported."""
    if "sklearn" not in sys.modules and "transformers.generation" not in sys.modules:
        sys.modules["sklearn"] = None
