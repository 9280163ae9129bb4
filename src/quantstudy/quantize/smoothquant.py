"""SmoothQuant (Xiao et al., 2023) as pure functions, and the scale fold AWQ shares.

Activation outliers make per-token INT8 activations coarse. SmoothQuant moves part of
each input channel's range from the activations into the weights: with per-channel
factors s, X W^T = (X / s)(W s)^T. Dividing the preceding RMSNorm's gain by s does the
activation side for free, so the float model computes the same function (up to
rounding) and only the quantization difficulty moves. Strength alpha balances the two:
s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha).
"""

from __future__ import annotations

import torch

MIN_VALUE = 1e-5


def smoothing_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """Per-input-channel factors for the linears that share one input."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing strength must be in [0, 1], got {alpha}")
    w_absmax = torch.stack([w.detach().abs().amax(dim=0).float() for w in weights]).amax(dim=0)
    scales = act_absmax.float().clamp(min=MIN_VALUE).pow(alpha) / w_absmax.clamp(min=MIN_VALUE).pow(1 - alpha)
    return scales.clamp(min=MIN_VALUE)


@torch.no_grad()
def fold_smoothing(norm_weight: torch.Tensor, weights: list[torch.Tensor], scales: torch.Tensor,
                   offset: float = 0.0) -> None:
    """In place: norm gain / s, each weight's input columns * s (a function-preserving change).
    A norm computing x_hat * (offset + gain) (Gemma: offset 1) gets gain -> (offset + gain) / s - offset."""
    s = scales.to(norm_weight.dtype)
    if offset:
        norm_weight.add_(offset).div_(s).sub_(offset)
    else:
        norm_weight.div_(s)
    for w in weights:
        w.mul_(scales.to(w.dtype).unsqueeze(0))


@torch.no_grad()
def fold_into_linear(prev_weight: torch.Tensor, prev_bias: torch.Tensor | None, rows: slice,
                     weights: list[torch.Tensor], scales: torch.Tensor) -> None:
    """In place: the `rows` of a preceding linear's output (weight rows and bias) / s, each
    weight's input columns * s -- AWQ's fold across up -> down and v -> o."""
    prev_weight[rows].div_(scales.to(prev_weight.dtype).unsqueeze(1))
    if prev_bias is not None:
        prev_bias[rows].div_(scales.to(prev_bias.dtype))
    for w in weights:
        w.mul_(scales.to(w.dtype).unsqueeze(0))
