"""Number formats: how a value is stored on a scheme's grid, and read back.

What a scheme's numbers *are* (`schemes` says which format; this module says what the
format computes), shared by every floor that touches quantized values: the quantize
stage rounds onto these grids, the inference engine emulates them (dequantized weights,
activations quantized per token on the fly), the checkpoint reader checks them.

Conventions follow compressed-tensors (and through it vLLM), so that what we compute
is exactly what a checkpoint stores and an engine reads back:
- integers are signed: q in [-2^(b-1), 2^(b-1)-1], asymmetric zero points live in the
  same range and 0.0 is always representable;
- a symmetric scale is absmax / (range / 2) (e.g. absmax / 7.5 for INT4, as GPTQ);
- FP8 is E4M3 (max 448) with scale = absmax / 448;
- a scale is rounded to its storage dtype *before* rounding the weights, so the stored
  (q, scale) pair reproduces the dequantized weight bit for bit.

Scale shapes are those of compressed-tensors: tensor (1,), channel (out, 1),
group (out, in / group), block (ceil(out / rows), ceil(in / cols)). How a scale is
*chosen* (abs-max, MSE clipping, GPTQ, AWQ) is the quantize stage's business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from quantstudy import numerics_fp as fp
from quantstudy.schemes import GROUPED, ActivationQuant, NumberType, Strategy, WeightQuant

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized weight as stored: integer/FP8 values plus their parameters."""

    q: torch.Tensor  # int8 (any bit width <= 8) or float8_e4m3fn (FP8, and FP4 values), shape [out, in]
    scale: torch.Tensor  # the scale dtype; MX: float8_e8m0fnu, NVFP4: float8_e4m3fn (numerics_fp)
    zero_point: torch.Tensor | None  # int8, only for asymmetric schemes
    args: WeightQuant
    g_idx: torch.Tensor | None = None  # input column -> group, for act-order groups
    global_scale: torch.Tensor | None = None  # NVFP4: FP32 [1], shared by row-stacked (fused) linears
    input_global_scale: torch.Tensor | None = None  # NVFP4 W4A4: the calibrated input global scale

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
        # a global scale belongs to every row: fused linears (q/k/v, gate/up) must share one,
        # as vLLM reads one per fused layer
        return [QuantizedWeight(q.contiguous(), s.contiguous(), None if z is None else z.contiguous(), self.args,
                                global_scale=self.global_scale, input_global_scale=self.input_global_scale)
                for q, s, z in zip(qs, scales, zps)]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dequantized weight: exact in float32, then rounded once to `dtype` — the
        same value compressed-tensors / vLLM produce when they dequantize in `dtype`."""
        return dequantize(self.q, self.scale, self.zero_point, self.args, self.g_idx,
                          global_scale=self.global_scale).to(dtype)


def int_range(num_bits: int) -> tuple[int, int]:
    return -(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1


def half_range(args: WeightQuant | ActivationQuant) -> float:
    if args.type is NumberType.FLOAT:
        return FP8_MAX
    lo, hi = int_range(args.num_bits)
    return (hi - lo) / 2


def expand_to_weight(
    param: torch.Tensor, shape: torch.Size, args: WeightQuant, g_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Broadcast a scale or zero point to the full weight shape."""
    rows, cols = shape
    if args.strategy is Strategy.TENSOR:
        return param.reshape(1, 1).expand(rows, cols)
    if args.strategy is Strategy.CHANNEL:
        return param.reshape(rows, 1).expand(rows, cols)
    if args.strategy in GROUPED:
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
    global_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round a weight onto its grid: int8-held integers, or float8_e4m3fn values (FP8, or
    FP4 values, which FP8 holds exactly)."""
    if fp.is_microscaled(args):
        s = expand_to_weight(fp.value_scale(scale, args, global_scale), w.shape, args, g_idx)
        return fp.round_to_grid(w.float() / s, args.num_bits).to(FP8_DTYPE)
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
    """Quantize-dequantize with scale / zero point already broadcast to x (float32 out).
    For MX / NV formats `scale` is the value scale (`numerics_fp.value_scale`)."""
    x = x.float()
    if fp.is_microscaled(args):
        return fp.qdq(x, scale, args.num_bits)
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
    global_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 weight from stored values. Exact: |q| <= 448 times a <=16-bit-mantissa scale
    (NVFP4: times the float32 quotient scale / global scale, as compressed-tensors computes it)."""
    x = q.float()
    if fp.is_microscaled(args):
        return x * expand_to_weight(fp.value_scale(scale, args, global_scale), q.shape, args, g_idx)
    if zero_point is not None:
        x = x - expand_to_weight(zero_point.float(), q.shape, args, g_idx)
    return x * expand_to_weight(scale.float(), q.shape, args, g_idx)


def quantize_activations(x: torch.Tensor, args: ActivationQuant,
                         global_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Dynamic quantize-dequantize of activations, per token (or per token-group).

    Scales are absmax / half-range computed in float32 from each token, as
    compressed-tensors does at run time, and the result is returned in x's dtype.
    MX / NVFP4 activations: `numerics_fp` (NVFP4 with the linear's input `global_scale`).
    """
    if fp.is_microscaled(args):
        return fp.quantize_activations_fp(x, args, global_scale)
    orig_dtype, orig_shape = x.dtype, x.shape
    xf = x.float()
    if args.strategy is Strategy.GROUP:
        xf = xf.unflatten(-1, (orig_shape[-1] // args.group_size, args.group_size))
    absmax = xf.abs().amax(dim=-1, keepdim=True)
    scale = absmax / half_range(args)
    scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(torch.float32).eps), scale)
    if args.type is NumberType.FLOAT:
        q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float()
    else:
        lo, hi = int_range(args.num_bits)
        q = torch.round(xf / scale).clamp(lo, hi)
    return (q * scale).reshape(orig_shape).to(orig_dtype)


def sum_squares(x: torch.Tensor, minus: torch.Tensor | None = None, chunk: int = 1 << 20) -> float:
    """sum((x - minus)^2) in float64, chunk by chunk (constant extra memory: whole-tensor
    float64 copies cost 1.4 GB and 6-9 s per 8B-model MLP weight), and the same to the last
    bit whatever the thread count or the tensors' alignment: each chunk is summed as rows of
    `_ROW` elements (one thread per row, in a fresh buffer), the row sums then in one short
    sequential sum. A Ray worker (one thread) and the driver (all cores) must write the same
    per-layer report: it is part of a checkpoint's fingerprint."""
    xf = x.reshape(-1)
    mf = None if minus is None else minus.reshape(-1)
    total = 0.0
    for i in range(0, xf.numel(), chunk):
        d = xf[i:i + chunk].to(torch.float64, copy=True)
        if mf is not None:
            d -= mf[i:i + chunk].to(torch.float64)
        d *= d
        whole = d.numel() // _ROW * _ROW
        rows = d[:whole].view(-1, _ROW).sum(dim=1)
        total += rows.sum().item() + d[whole:].sum().item()
    return total


_ROW = 1024


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (infinite when exact)."""
    return sqnr_from(sum_squares(reference), sum_squares(reference, approx))


def sqnr_from(signal: float, noise: float) -> float:
    """SQNR in dB from sums of squares already computed (infinite when exact)."""
    if noise == 0:
        return float("inf")
    return 10.0 * math.log10(signal / noise)
