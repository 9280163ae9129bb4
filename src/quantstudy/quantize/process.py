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
    import os

    # ...and torch's own allocations past 2 MiB get transparent huge pages (torch's
    # THP_MEM_ALLOC_ENABLE, read at its first large allocation; Linux with THP in 'madvise'
    # mode). The price of returnable memory is a page fault per 4 KiB every time a fresh map is
    # touched: SmolLM2 W4A16 GPTQ took 15.5 M faults, a fifth of its CPU time in the kernel;
    # 5.5 M with 2 MiB pages (smaller tensors keep 4 KiB ones), 15% less CPU (2026-12-06).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


UNUSED_WHEN_QUANTIZING = ("sklearn", "scipy", "triton")


def without_sklearn() -> None:
    """Keep scikit-learn, SciPy and Triton out of a process that only quantizes. transformers
    imports `sklearn.metrics` (with SciPy: 145 MiB resident, 1.5 s) whenever it is installed,
    for assisted generation's confidence threshold; its object-detection losses import
    `scipy.optimize` (36 MiB) with every model class; torch._dynamo, which transformers'
    masking code imports, loads Triton (73 MiB) where it is installed. Quantizing uses none of
    them (no torch.compile; Triton kernels are for GPUs, and our GPU forwards run eager).
    Marking them absent before transformers is imported makes both libraries see them as
    not installed. A no-op once transformers is imported."""
    if "transformers" in sys.modules:
        return
    for name in UNUSED_WHEN_QUANTIZING:
        if name not in sys.modules:
            sys.modules[name] = None
