"""Quantized linear layers as GPU kernels, for measuring what each format buys on a card.

`linear.py` holds the four formats as small functions over prepared weights (BF16,
FP8 W8A8, INT8 W8A8, INT4 W4A16); `w4a16_triton.py` is our INT4 weight-only GEMM. On a
machine without CUDA every function still runs (through PyTorch reference paths), so
the benchmark's correctness checks run in CI.

Used by `benchmarks/gpu_kernels.py` (and its tests) only: no stage serves through these
kernels; the engines use vLLM's. They stay in the package because the benchmark's record
(`bench/data/gpu_efficiency.json`) feeds the roofline, and CI checks their arithmetic.
"""
