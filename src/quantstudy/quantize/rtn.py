"""Round-to-nearest: the calibration-free baseline algorithm (and FP8's recipe in the paper)."""

from __future__ import annotations

import torch

from quantstudy.numerics import QuantizedWeight, quantize
from quantstudy.numerics_fp import is_microscaled
from quantstudy.quantize.primitives import compute_qparams, reduce_min_max
from quantstudy.schemes import WeightQuant


def rtn_quantize(
    w: torch.Tensor, args: WeightQuant, scale_dtype: torch.dtype, clip_ratio: float = 1.0
) -> QuantizedWeight:
    """Quantize a [out, in] weight with abs-max scales, optionally shrunk by `clip_ratio`.
    MX / NVFP4 formats fix their scales' type (`scale_dtype` does not apply): `quantize.fp4`."""
    if is_microscaled(args):
        from quantstudy.quantize.fp4 import fp_rtn

        return fp_rtn(w, args, clip=clip_ratio)
    min_vals, max_vals = reduce_min_max(w.float(), args)
    scale, zero_point = compute_qparams(min_vals * clip_ratio, max_vals * clip_ratio, args, scale_dtype)
    return QuantizedWeight(quantize(w, scale, zero_point, args), scale, zero_point, args)
