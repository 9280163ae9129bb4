"""How a weight's scales are chosen: per-scale extrema, abs-max and MSE-optimal clipping.

The number formats themselves (rounding onto a grid, dequantizing, per-token activation
QDQ) live in `quantstudy.numerics`, one floor down, because the inference engine needs
them too; this module holds what only the quantize stage does: choose the scale and
zero point each group of weights gets.
"""

from __future__ import annotations

import torch

from quantstudy.numerics import half_range, int_range, qdq_elementwise
from quantstudy.schemes import GROUPED, NumberType, Strategy, WeightQuant

CHUNK_ELEMENTS = 1 << 17   # weights per chunk of the MSE search (512 KiB of float32)
COARSE_PATIENCE = 2        # coarse ratios without any improvement that end the MSE search's coarse pass


def reduce_min_max(w: torch.Tensor, args: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scale minimum and maximum of a 2-D weight, in the scale's shape."""
    rows, cols = w.shape
    if args.strategy is Strategy.TENSOR:
        return w.amin().reshape(1), w.amax().reshape(1)
    if args.strategy is Strategy.CHANNEL:
        return w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    if args.strategy in GROUPED:
        g = args.group_size
        if cols % g:
            raise ValueError(f"in_features {cols} not divisible by group size {g}")
        grouped = w.reshape(rows, cols // g, g)
        return grouped.amin(dim=2), grouped.amax(dim=2)
    if args.strategy is Strategy.BLOCK:
        br, bc = args.block
        if rows % br or cols % bc:
            raise ValueError(f"weight {rows}x{cols} not divisible by block {br}x{bc}")
        blocks = w.reshape(rows // br, br, cols // bc, bc)
        return blocks.amin(dim=(1, 3)), blocks.amax(dim=(1, 3))
    raise ValueError(f"unsupported weight strategy {args.strategy}")


def reduce_sum(x: torch.Tensor, args: WeightQuant) -> torch.Tensor:
    """Sum of a per-element quantity over each scale's elements, in the scale's shape."""
    rows, cols = x.shape
    if args.strategy is Strategy.TENSOR:
        return x.sum().reshape(1)
    if args.strategy is Strategy.CHANNEL:
        return x.sum(dim=1, keepdim=True)
    if args.strategy in GROUPED:
        return x.reshape(rows, cols // args.group_size, args.group_size).sum(dim=2)
    br, bc = args.block
    return x.reshape(rows // br, br, cols // bc, bc).sum(dim=(1, 3))


def compute_qparams(
    min_vals: torch.Tensor,
    max_vals: torch.Tensor,
    args: WeightQuant,
    scale_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (rounded to `scale_dtype`) and integer zero point from per-scale extrema."""
    min_vals = torch.clamp(min_vals.float(), max=0.0)  # 0.0 must be representable
    max_vals = torch.clamp(max_vals.float(), min=0.0)
    eps = torch.finfo(scale_dtype).eps
    if args.symmetric:
        absmax = torch.maximum(min_vals.abs(), max_vals)
        scale = (absmax / half_range(args)).to(scale_dtype)
        scale = torch.where(scale == 0, torch.full_like(scale, eps), scale)
        return scale, None
    lo, hi = int_range(args.num_bits)
    scale = ((max_vals - min_vals) / (hi - lo)).to(scale_dtype)
    scale = torch.where(scale == 0, torch.full_like(scale, eps), scale)
    zero_point = torch.clamp(torch.round(lo - min_vals / scale.float()), lo, hi)
    return scale, zero_point.to(torch.int8)


def grouped_view(w: torch.Tensor, args: WeightQuant) -> torch.Tensor:
    """The weight as [number of scales, elements per scale], rows in scale order."""
    rows, cols = w.shape
    if args.strategy is Strategy.TENSOR:
        return w.reshape(1, -1)
    if args.strategy is Strategy.CHANNEL:
        return w
    if args.strategy in GROUPED:
        return w.reshape(-1, args.group_size)
    br, bc = args.block
    return w.reshape(rows // br, br, cols // bc, bc).permute(0, 2, 1, 3).reshape(-1, br * bc)


def mse_clip_qparams(
    w: torch.Tensor,
    args: WeightQuant,
    scale_dtype: torch.dtype,
    grid: int = 100,
    max_shrink: float = 0.8,
    norm: float = 2.4,
    coarse_step: int = 5,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MSE-optimal clipping: per scale, the range shrink factor p = 1 - i/grid,
    i < max_shrink * grid, minimising sum |w - Q_p(w)|^norm (the settings of GPTQ's and
    llm-compressor's MSE observer).

    Searched coarse-to-fine: every `coarse_step`-th ratio first (until COARSE_PATIENCE in a
    row improve nothing), then the ratios around each scale's best coarse one — at most a
    third of the evaluations of the full grid. Abs-max
    (p = 1) is always a candidate, so the result is never worse than abs-max."""
    out_shape = reduce_min_max(w, args)[0].shape
    wg = grouped_view(w.float(), args)
    # Scales are searched independently, so rows of scales go through in chunks of about
    # CHUNK_ELEMENTS weights: the same result, with temporaries that stay in cache and
    # never need memory maps of their own.
    rows = max(1, CHUNK_ELEMENTS // wg.shape[1])
    found = [_mse_search(wg[r:r + rows], args, scale_dtype, grid, int(max_shrink * grid), norm, coarse_step)
             for r in range(0, wg.shape[0], rows)]
    scale = torch.cat([f[0] for f in found]).reshape(out_shape)
    zp = None if found[0][1] is None else torch.cat([f[1] for f in found]).reshape(out_shape)
    return scale, zp


def _mse_search(wg: torch.Tensor, args: WeightQuant, scale_dtype: torch.dtype, grid: int, steps: int, norm: float,
                coarse_step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The coarse-to-fine shrink search for rows of a grouped weight (one scale per row)."""
    min_vals, max_vals = wg.amin(dim=1), wg.amax(dim=1)

    def error(p: torch.Tensor):
        scale, zp = compute_qparams(min_vals * p, max_vals * p, args, scale_dtype)
        return _qdq_error(wg, scale.float()[:, None], None if zp is None else zp.float()[:, None], args, norm), scale, zp

    best_err, best_scale, best_zp = error(torch.ones_like(min_vals))
    best_i = torch.zeros_like(min_vals, dtype=torch.long)

    def consider(i: torch.Tensor) -> bool:
        nonlocal best_err, best_scale, best_zp, best_i
        err, scale, zp = error(1 - i.float() / grid)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_i = torch.where(better, i, best_i)
        if best_zp is not None:
            best_zp = torch.where(better, zp, best_zp)
        return bool(better.any())

    # The coarse pass stops once COARSE_PATIENCE ratios in a row improve no scale of the chunk
    # (the error rises past each scale's optimum): on SmolLM2 it then evaluates 40% of the
    # coarse ratios for W4A16 g64 and 13% for INT8 channels, with identical scales on all 210
    # linears (2026-12-06); llm-compressor's MSE observer stops on a patience the same way.
    idle = 0
    for i in range(coarse_step, steps, coarse_step):
        idle = 0 if consider(torch.full_like(best_i, i)) else idle + 1
        if idle >= COARSE_PATIENCE:
            break
    center = best_i.clone()
    for offset in range(-(coarse_step - 1), coarse_step):
        if offset:
            consider((center + offset).clamp(0, steps - 1))
    return best_scale, best_zp


def _qdq_error(wg: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, args: WeightQuant,
               norm: float) -> torch.Tensor:
    """sum |w - qdq(w)|^norm per row: `qdq_elementwise`'s arithmetic, step for step, done in
    place on one temporary for integer grids (the search's hot loop: 1.7x faster).

    |e|^norm is taken as exp(norm * log|e|) (0 stays 0): torch's pow with a fractional
    exponent costs 3x a log and an exp and was 70% of the search. The two differ by a few
    ulps, which moved 8 of SmolLM2's 1.66 M W4A16 g64 scales to a neighbouring shrink
    factor of near-equal error and none of its 155 k channel scales (2026-12-06)."""
    if args.type is NumberType.FLOAT:
        return (wg - qdq_elementwise(wg, scale, zp, args)).abs().pow(norm).sum(dim=1)
    lo, hi = int_range(args.num_bits)
    q = torch.div(wg, scale).round_()
    if zp is None:
        q.clamp_(lo, hi)
    else:
        q.add_(zp).clamp_(lo, hi).sub_(zp)
    return q.mul_(scale).sub_(wg).abs_().log_().mul_(norm).exp_().sum(dim=1)
