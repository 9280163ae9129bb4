"""Microscaled float formats: FP4 E2M1 values, OCP-MX E8M0 scales, NVFP4's two-level scales.

The arithmetic of compressed-tensors 0.17.0 (and so of what vLLM and transformers read),
reproduced step for step so that our quantize-dequantize is bit-identical to its
`fake_quantize` with the scales its `calculate_qparams` / `generate_gparam` produce
(tests/test_formats_fp4.py checks this against the library itself):

- FP4 E2M1: values {0, 0.5, 1, 1.5, 2, 3, 4, 6} and their negatives; x is clamped to +-6
  and rounded to nearest, ties to even mantissa (`FP4_E2M1_DATA.cast_to_fp4`'s buckets:
  0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4). The library's
  version is torch.compile'd (33 s to compile on a CPU); this one computes the same
  buckets as round(|x| / step) * step, step 0.5 / 1 / 2 below 2 / 4 / 6, which is exact.
- MX (MXFP4, MXFP8): one power-of-two scale per 32 values, stored as a biased exponent
  byte. The group's abs-max is rounded to a power of two (up from mantissa 1.75: the
  library adds 2^21 to the float32 bits and masks the mantissa), then divided by 2^2 (FP4)
  or 2^8 (FP8), floor(log2(element max)): exponent 127 + log2(p2) - offset, clamped to
  [0, 255]. Values above the element max after scaling are clipped.
- NVFP4: one FP8 E4M3 scale per 16 values under one FP32 global scale per tensor,
  g = 448 * 6 / absmax(tensor); the stored group scale is fp8(g * absmax_group / 6) (0
  becomes 0.125), and the value scale is that divided by g, in float32. Activations take
  their group scales on the fly and a global scale calibrated offline.

In memory, FP4 values are held as float8_e4m3fn (every E2M1 value is one, exactly), MX
scales as float8_e8m0fnu (exactly the stored exponent byte) and NVFP4 group scales as
float8_e4m3fn, so `.float()` gives each exact value.
"""

from __future__ import annotations

import torch

from quantstudy.schemes import ActivationQuant, Strategy, WeightQuant

FP4_MAX = 6.0
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
E8M0_DTYPE = torch.float8_e8m0fnu
NV_GLOBAL_NUMERATOR = FP8_MAX * FP4_MAX   # 2688: maps the tensor's abs-max to FP4 max at the FP8 scale max
MX_ELEMENT_OFFSET = {4: 2, 8: 8}   # floor(log2(element max)): FP4 6 -> 2, FP8 448 -> 8
NV_ZERO_SCALE = 0.125   # what compressed-tensors puts in place of an all-zero group's FP8 scale


def is_microscaled(args: WeightQuant | ActivationQuant) -> bool:
    """MX and NV formats: the format fixes the scales' type and how they follow from abs-max."""
    return args.scale_dtype is not None


def is_nv(args: WeightQuant | ActivationQuant) -> bool:
    return args.strategy is Strategy.TENSOR_GROUP


def round_fp4(x: torch.Tensor) -> torch.Tensor:
    """x (float32) clamped to +-6 and rounded onto the E2M1 grid, ties to even mantissa."""
    x = x.clamp(-FP4_MAX, FP4_MAX)
    a = x.abs()
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    return torch.round(a / step).mul_(step).mul_(torch.sign(x))   # sign * value, as the library


def round_to_grid(x: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Scaled values onto the element grid (FP4 E2M1 or FP8 E4M3), returned as float32."""
    if num_bits == 4:
        return round_fp4(x)
    return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def mx_exponents(absmax: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Biased E8M0 exponents (int32 in 0..255) of the MX scales of groups with abs-max `absmax`."""
    bits = absmax.float().contiguous().view(torch.int32)
    p2 = torch.bitwise_and(bits + (1 << 21), 0x7F800000).view(torch.float32)   # round to a power of 2
    e = 127 + torch.floor(torch.log2(p2)) - MX_ELEMENT_OFFSET[num_bits]
    return torch.round(e.clamp(0, 255)).to(torch.int32)


def mx_scales(absmax: torch.Tensor, num_bits: int) -> torch.Tensor:
    """MX scales 2^(e - 127) as float8_e8m0fnu (exact: the exponent byte itself)."""
    e = mx_exponents(absmax, num_bits)
    return e.to(torch.uint8).view(E8M0_DTYPE)


def e8m0_value(scale: torch.Tensor) -> torch.Tensor:
    """float32 values of E8M0 scales, computed as compressed-tensors does (2.0 ** (e - 127))."""
    e = scale.view(torch.uint8).to(torch.int32) - 127
    return 2.0 ** e.to(torch.float)


def nv_global_scale(absmax: torch.Tensor | float) -> torch.Tensor:
    """NVFP4's FP32 global scale from a tensor's abs-max (compressed-tensors' `generate_gparam`)."""
    m = torch.as_tensor(absmax, dtype=torch.float32).reshape(1)
    m = torch.clamp(m, min=torch.finfo(torch.float32).tiny)
    g = NV_GLOBAL_NUMERATOR / m
    return torch.nan_to_num(g, nan=1.0, posinf=1.0, neginf=1.0).to(torch.float32).reshape(1)


def nv_scales(absmax: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """NVFP4 group scales fp8(g * absmax / 6) as float8_e4m3fn (0 -> 0.125), from float32 abs-max."""
    s = global_scale * (absmax.float() / FP4_MAX)
    s = s.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return torch.where(s.float() == 0, torch.tensor(NV_ZERO_SCALE), s.float()).to(torch.float8_e4m3fn)


def group_scales(absmax: torch.Tensor, args: WeightQuant | ActivationQuant,
                 global_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The stored scales of groups with abs-max `absmax` (float32), in the format's scale type."""
    if is_nv(args):
        return nv_scales(absmax, global_scale)
    return mx_scales(absmax, args.num_bits)


def value_scale(scale: torch.Tensor, args: WeightQuant | ActivationQuant,
                global_scale: torch.Tensor | None = None) -> torch.Tensor:
    """What one grid step is worth, in float32: the stored scale (over the global scale for NV)."""
    if scale.dtype == E8M0_DTYPE:
        return e8m0_value(scale)
    s = scale.float()
    return s / global_scale.float() if global_scale is not None else s


def qdq(x: torch.Tensor, step: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Quantize-dequantize with value scales `step` broadcast to x: round(x / step) * step."""
    return round_to_grid(x.float() / step, num_bits) * step


def quantize_activations_fp(x: torch.Tensor, args: ActivationQuant,
                            global_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Dynamic MX / NVFP4 activation QDQ per token and group of `args.group_size` inputs,
    computed in float32 and returned in x's dtype (NVFP4: `global_scale` is the linear's
    calibrated input global scale)."""
    if is_nv(args) and global_scale is None:
        raise ValueError("NVFP4 activations need the linear's calibrated input global scale")
    orig_dtype, shape = x.dtype, x.shape
    xf = x.float().unflatten(-1, (shape[-1] // args.group_size, args.group_size))
    absmax = torch.maximum(xf.amin(dim=-1).clamp(max=0).abs(), xf.amax(dim=-1).clamp(min=0))
    step = value_scale(group_scales(absmax, args, global_scale), args, global_scale)[..., None]
    return qdq(xf, step, args.num_bits).reshape(shape).to(orig_dtype)


def input_global_scale(absmax: torch.Tensor | float) -> torch.Tensor:
    """A linear's NVFP4 input global scale from its inputs' abs-max over the calibration set
    (the library's `static_minmax` observer then `generate_gparam`)."""
    return nv_global_scale(absmax)
