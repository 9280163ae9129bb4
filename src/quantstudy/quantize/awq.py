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

from quantstudy.quantize.primitives import (
    QuantizedWeight,
    compute_qparams,
    expand_to_weight,
    qdq_elementwise,
    quantize,
    reduce_min_max,
)
from quantstudy.schemes import Strategy, WeightQuant


def _rtn_qdq(w: torch.Tensor, args: WeightQuant, scale_dtype: torch.dtype, clip: torch.Tensor | float = 1.0):
    mins, maxs = reduce_min_max(w, args)
    scale, zp = compute_qparams(mins * clip, maxs * clip, args, scale_dtype)
    s = expand_to_weight(scale.float(), w.shape, args)
    z = None if zp is None else expand_to_weight(zp.float(), w.shape, args)
    return qdq_elementwise(w, s, z, args), scale, zp


def awq_search_scales(
    x: torch.Tensor, weights: list[torch.Tensor], args: WeightQuant, scale_dtype: torch.dtype, grid: int = 20
) -> torch.Tensor:
    """Per-input-channel scales for linears sharing input x [tokens, in]; all ones if
    no exponent beats plain rounding."""
    x = x.float()
    refs = [x @ w.float().T for w in weights]
    x_mean = x.abs().mean(dim=0)
    best_loss, best = float("inf"), torch.ones_like(x_mean)
    for i in range(grid):
        ratio = i / grid
        s = x_mean.pow(ratio).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = 0.0
        for w, ref in zip(weights, refs):
            wq = _rtn_qdq(w.float() * s, args, scale_dtype)[0] / s
            loss += (x @ wq.T - ref).pow(2).sum().item()
        if loss < best_loss:
            best_loss, best = loss, s
    return best


def awq_clip_ratios(
    x: torch.Tensor, w: torch.Tensor, args: WeightQuant, scale_dtype: torch.dtype,
    grid: int = 20, max_shrink: float = 0.5, max_tokens: int = 512,
) -> torch.Tensor:
    """Per (row, group) range shrink in (1 - max_shrink, 1] minimising that group's
    contribution to the output error on (a sample of) x."""
    if args.strategy is not Strategy.GROUP:
        raise ValueError("AWQ clip search is defined for group-wise weights")
    x = x.float()
    if x.shape[0] > max_tokens:
        x = x[torch.linspace(0, x.shape[0] - 1, max_tokens).long()]
    w = w.float()
    rows, cols = w.shape
    g = args.group_size
    xg = x.reshape(x.shape[0], cols // g, g)
    best_err = torch.full((rows, cols // g), float("inf"))
    best = torch.ones(rows, cols // g)
    for i in range(int(max_shrink * grid)):
        p = 1 - i / grid
        wq = _rtn_qdq(w, args, scale_dtype, clip=p)[0]
        dw = (wq - w).reshape(rows, cols // g, g)
        err = torch.einsum("ngk,rgk->nrg", xg, dw).pow(2).sum(dim=0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, p), best)
    return best


def awq_quantize(w: torch.Tensor, args: WeightQuant, scale_dtype: torch.dtype,
                 clip: torch.Tensor | None = None) -> QuantizedWeight:
    """RTN of an (already AWQ-scaled) weight with per-(row, group) clip ratios."""
    mins, maxs = reduce_min_max(w.float(), args)
    ratio = 1.0 if clip is None else clip
    scale, zp = compute_qparams(mins * ratio, maxs * ratio, args, scale_dtype)
    return QuantizedWeight(quantize(w, scale, zp, args), scale, zp, args)
