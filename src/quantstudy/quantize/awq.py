"""AWQ (Lin et al., 2024) as pure functions: activation-aware scales and clipping.

Weight-only INT4 loses most on the input channels that see large activations. AWQ
scales those channels up before rounding (W s, with 1/s folded into the preceding
operation) so they get relatively finer steps; s = mean|X|^a, with a searched on a
grid to minimise the output error of the linears sharing that input. Then, per output
row and group, it searches how far to shrink the range (clip) to minimise the output
error of that group's contribution.
"""

from __future__ import annotations

import torch

from quantstudy.numerics import QuantizedWeight, qdq_elementwise, quantize
from quantstudy.quantize.primitives import compute_qparams, grouped_view, reduce_min_max
from quantstudy.numerics_fp import is_microscaled
from quantstudy.schemes import GROUPED, Strategy, WeightQuant


def _rtn_qdq(w: torch.Tensor, args: WeightQuant, scale_dtype: torch.dtype, clip: torch.Tensor | float = 1.0,
             global_scale: torch.Tensor | None = None):
    """Quantize-dequantize with abs-max scales shrunk by `clip` (scalar or per scale).
    MX / NVFP4: the format's scales over its value set (NVFP4: under `global_scale`, or w's)."""
    if is_microscaled(args):
        from quantstudy.quantize.fp4 import fp_rtn

        return fp_rtn(w, args, global_scale, clip).dequantize()
    if args.strategy is Strategy.BLOCK:
        raise ValueError("AWQ is defined for tensor, channel and group scales, not 2-D blocks")
    wg = grouped_view(w, args)  # rows in scale order; reshaping back is exact for non-block
    clip = clip if isinstance(clip, float) else clip.reshape(-1)
    scale, zp = compute_qparams(wg.amin(dim=1) * clip, wg.amax(dim=1) * clip, args, scale_dtype)
    q = qdq_elementwise(wg, scale.float()[:, None], None if zp is None else zp.float()[:, None], args)
    return q.reshape(w.shape)


def input_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(sum |x| per channel, Gram matrix x^T x, token count) of activations [..., in]."""
    x = x.reshape(-1, x.shape[-1]).float()
    return x.abs().sum(dim=0), x.T @ x, x.shape[0]


def _output_error(dw: torch.Tensor, gram: torch.Tensor) -> float:
    """||X dW^T||^2 = sum over rows of dW_r G dW_r^T: cost independent of the token count."""
    return ((dw @ gram) * dw).sum().item()


def awq_search_scales(
    abs_mean: torch.Tensor, gram: torch.Tensor, weights: list[torch.Tensor], args: WeightQuant,
    scale_dtype: torch.dtype, grid: int = 20,
) -> torch.Tensor:
    """Per-input-channel scales s = mean|x|^a for linears sharing one input, a on a grid,
    minimising the summed output error of Q(W s)/s; all ones if nothing beats RTN (a = 0).
    `gram` is x^T x over every calibration token (no subsampling needed)."""
    gram = gram.float()
    best_loss, best = float("inf"), torch.ones_like(abs_mean)
    for i in range(grid):
        s = abs_mean.float().pow(i / grid).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = sum(_output_error(_rtn_qdq(w.float() * s, args, scale_dtype) / s - w.float(), gram) for w in weights)
        if loss < best_loss:
            best_loss, best = loss, s
    return best


def awq_clip_ratios(
    gram: torch.Tensor, w: torch.Tensor, args: WeightQuant, scale_dtype: torch.dtype,
    grid: int = 20, max_shrink: float = 0.5, global_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per (row, group) range shrink in (1 - max_shrink, 1] minimising that group's
    contribution to the output error: dW_rg G_gg dW_rg^T with G_gg the group's diagonal
    block of the Gram matrix (cross-group terms are left out, as AWQ does)."""
    if args.strategy not in GROUPED:
        raise ValueError("AWQ clip search is defined for group-wise weights")
    w = w.float()
    rows, cols = w.shape
    g = args.group_size
    n = cols // g
    blocks = gram.float().reshape(n, g, n, g).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [n, g, g]
    best_err = torch.full((rows, n), float("inf"), device=w.device)
    best = torch.ones(rows, n, device=w.device)
    for i in range(int(max_shrink * grid)):
        p = 1 - i / grid
        dw = (_rtn_qdq(w, args, scale_dtype, clip=p, global_scale=global_scale) - w).reshape(rows, n, g)
        err = torch.einsum("rnk,nkl,rnl->rn", dw, blocks, dw)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, p), best)
    return best


def awq_quantize(w: torch.Tensor, args: WeightQuant, scale_dtype: torch.dtype,
                 clip: torch.Tensor | None = None, global_scale: torch.Tensor | None = None) -> QuantizedWeight:
    """RTN of an (already AWQ-scaled) weight with per-(row, group) clip ratios (NVFP4: under
    `global_scale`, shared by fused linears, else the weight's own)."""
    if is_microscaled(args):
        from quantstudy.quantize.fp4 import fp_rtn

        return fp_rtn(w, args, global_scale, 1.0 if clip is None else clip)
    mins, maxs = reduce_min_max(w.float(), args)
    ratio = 1.0 if clip is None else clip
    scale, zp = compute_qparams(mins * ratio, maxs * ratio, args, scale_dtype)
    return QuantizedWeight(quantize(w, scale, zp, args), scale, zp, args)
