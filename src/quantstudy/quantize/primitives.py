"""Pure tensor maths of quantization: ranges, scales, zero points, round, cast, QDQ.

Conventions follow compressed-tensors (and through it vLLM), so that what we compute
is exactly what a checkpoint stores and an engine reads back:
- integers are signed: q in [-2^(b-1), 2^(b-1)-1], asymmetric zero points live in the
  same range and 0.0 is always representable;
- a symmetric scale is absmax / (range / 2) (e.g. absmax / 7.5 for INT4, as GPTQ);
- FP8 is E4M3 (max 448) with scale = absmax / 448;
- a scale is rounded to its storage dtype *before* rounding the weights, so the stored
  (q, scale) pair reproduces the dequantized weight bit for bit.

Scale shapes are those of compressed-tensors: tensor (1,), channel (out, 1),
group (out, in / group), block (ceil(out / rows), ceil(in / cols)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantstudy.schemes import ActivationQuant, NumberType, Strategy, WeightQuant

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized weight as stored: integer/FP8 values plus their parameters."""

    q: torch.Tensor  # int8 (any bit width <= 8) or float8_e4m3fn, shape [out, in]
    scale: torch.Tensor
    zero_point: torch.Tensor | None  # int8, only for asymmetric schemes
    args: WeightQuant
    g_idx: torch.Tensor | None = None  # input column -> group, for act-order groups

    def split_rows(self, sizes: list[int]) -> list["QuantizedWeight"]:
        """Undo a row-stacking of several weights quantized together (channel, group or
        block scales: each row's parameters belong to that row alone)."""
        if self.args.strategy is Strategy.TENSOR:
            raise ValueError("tensor-wise scales cannot be split by rows")
        if self.g_idx is not None:
            raise ValueError("act-order group indices cannot be split by rows")
        per_scale_row = 1 if self.args.strategy is not Strategy.BLOCK else self.args.block[0]
        qs = self.q.split(sizes)
        param_sizes = [n // per_scale_row for n in sizes]
        scales = self.scale.split(param_sizes)
        zps = [None] * len(sizes) if self.zero_point is None else self.zero_point.split(param_sizes)
        return [QuantizedWeight(q.contiguous(), s.contiguous(), None if z is None else z.contiguous(), self.args)
                for q, s, z in zip(qs, scales, zps)]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dequantized weight: exact in float32, then rounded once to `dtype` — the
        same value compressed-tensors / vLLM produce when they dequantize in `dtype`."""
        return dequantize(self.q, self.scale, self.zero_point, self.args, self.g_idx).to(dtype)


def int_range(num_bits: int) -> tuple[int, int]:
    return -(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1


def _half_range(args: WeightQuant | ActivationQuant) -> float:
    if args.type is NumberType.FLOAT:
        return FP8_MAX
    lo, hi = int_range(args.num_bits)
    return (hi - lo) / 2


def reduce_min_max(w: torch.Tensor, args: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scale minimum and maximum of a 2-D weight, in the scale's shape."""
    rows, cols = w.shape
    if args.strategy is Strategy.TENSOR:
        return w.amin().reshape(1), w.amax().reshape(1)
    if args.strategy is Strategy.CHANNEL:
        return w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    if args.strategy is Strategy.GROUP:
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
    if args.strategy is Strategy.GROUP:
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
        scale = (absmax / _half_range(args)).to(scale_dtype)
        scale = torch.where(scale == 0, torch.full_like(scale, eps), scale)
        return scale, None
    lo, hi = int_range(args.num_bits)
    scale = ((max_vals - min_vals) / (hi - lo)).to(scale_dtype)
    scale = torch.where(scale == 0, torch.full_like(scale, eps), scale)
    zero_point = torch.clamp(torch.round(lo - min_vals / scale.float()), lo, hi)
    return scale, zero_point.to(torch.int8)


def expand_to_weight(
    param: torch.Tensor, shape: torch.Size, args: WeightQuant, g_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Broadcast a scale or zero point to the full weight shape."""
    rows, cols = shape
    if args.strategy is Strategy.TENSOR:
        return param.reshape(1, 1).expand(rows, cols)
    if args.strategy is Strategy.CHANNEL:
        return param.reshape(rows, 1).expand(rows, cols)
    if args.strategy is Strategy.GROUP:
        if g_idx is not None:
            return param[:, g_idx.long()]
        return param.repeat_interleave(args.group_size, dim=1)
    if args.strategy is Strategy.BLOCK:
        br, bc = args.block
        return param.repeat_interleave(br, dim=0).repeat_interleave(bc, dim=1)[:rows, :cols]
    raise ValueError(f"unsupported weight strategy {args.strategy}")


def quantize(
    w: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    args: WeightQuant,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round a weight onto its grid: int8-held integers, or float8_e4m3fn values."""
    s = expand_to_weight(scale.float(), w.shape, args, g_idx)
    x = w.float() / s
    if args.type is NumberType.FLOAT:
        return x.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    lo, hi = int_range(args.num_bits)
    x = torch.round(x)
    if zero_point is not None:
        x = x + expand_to_weight(zero_point.float(), w.shape, args, g_idx)
    return x.clamp(lo, hi).to(torch.int8)


def qdq_elementwise(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, args: WeightQuant
) -> torch.Tensor:
    """Quantize-dequantize with scale / zero point already broadcast to x (float32 out)."""
    x = x.float()
    if args.type is NumberType.FLOAT:
        return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float() * scale
    lo, hi = int_range(args.num_bits)
    q = torch.round(x / scale)
    if zero_point is None:
        return q.clamp(lo, hi) * scale
    return ((q + zero_point).clamp(lo, hi) - zero_point) * scale


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    args: WeightQuant,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 weight from stored values. Exact: |q| <= 448 times a <=16-bit-mantissa scale."""
    x = q.float()
    if zero_point is not None:
        x = x - expand_to_weight(zero_point.float(), q.shape, args, g_idx)
    return x * expand_to_weight(scale.float(), q.shape, args, g_idx)


def quantize_activations(x: torch.Tensor, args: ActivationQuant) -> torch.Tensor:
    """Dynamic quantize-dequantize of activations, per token (or per token-group).

    Scales are absmax / half-range computed in float32 from each token, as
    compressed-tensors does at run time, and the result is returned in x's dtype.
    """
    orig_dtype, orig_shape = x.dtype, x.shape
    xf = x.float()
    if args.strategy is Strategy.GROUP:
        xf = xf.unflatten(-1, (orig_shape[-1] // args.group_size, args.group_size))
    absmax = xf.abs().amax(dim=-1, keepdim=True)
    scale = absmax / _half_range(args)
    scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(torch.float32).eps), scale)
    if args.type is NumberType.FLOAT:
        q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float()
    else:
        lo, hi = int_range(args.num_bits)
        q = torch.round(xf / scale).clamp(lo, hi)
    return (q * scale).reshape(orig_shape).to(orig_dtype)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (infinite when exact)."""
    ref = reference.double()
    noise = (ref - approx.double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return float("inf")
    return 10.0 * torch.log10(torch.tensor(signal / noise)).item()


def grouped_view(w: torch.Tensor, args: WeightQuant) -> torch.Tensor:
    """The weight as [number of scales, elements per scale], rows in scale order."""
    rows, cols = w.shape
    if args.strategy is Strategy.TENSOR:
        return w.reshape(1, -1)
    if args.strategy is Strategy.CHANNEL:
        return w
    if args.strategy is Strategy.GROUP:
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

    Searched coarse-to-fine: every `coarse_step`-th ratio first, then the ratios around
    each scale's best coarse one — a third of the evaluations of the full grid. Abs-max
    (p = 1) is always a candidate, so the result is never worse than abs-max."""
    out_shape = reduce_min_max(w, args)[0].shape
    wg = grouped_view(w.float(), args)
    min_vals, max_vals = wg.amin(dim=1), wg.amax(dim=1)
    steps = int(max_shrink * grid)

    def error(p: torch.Tensor):
        scale, zp = compute_qparams(min_vals * p, max_vals * p, args, scale_dtype)
        q = qdq_elementwise(wg, scale.float()[:, None], None if zp is None else zp.float()[:, None], args)
        return (wg - q).abs().pow(norm).sum(dim=1), scale, zp

    best_err, best_scale, best_zp = error(torch.ones_like(min_vals))
    best_i = torch.zeros_like(min_vals, dtype=torch.long)

    def consider(i: torch.Tensor) -> None:
        nonlocal best_err, best_scale, best_zp, best_i
        err, scale, zp = error(1 - i.float() / grid)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_i = torch.where(better, i, best_i)
        if best_zp is not None:
            best_zp = torch.where(better, zp, best_zp)

    for i in range(coarse_step, steps, coarse_step):
        consider(torch.full_like(best_i, i))
    center = best_i.clone()
    for offset in range(-(coarse_step - 1), coarse_step):
        if offset:
            consider((center + offset).clamp(0, steps - 1))
    return best_scale.reshape(out_shape), None if best_zp is None else best_zp.reshape(out_shape)
