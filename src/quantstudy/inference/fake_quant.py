"""Fake-quant modules: a quantized model emulated in PyTorch, numerically what an engine's
quantized GEMM computes (dequantized weights; W8A8 activations quantized per token on the
fly with compressed-tensors' formula, `numerics.quantize_activations`; MX activations per
group of 32 and NVFP4's per group of 16 under the linear's static input global scale).

This is how the in-process engine evaluates a checkpoint on any hardware; it is an
emulation in the model's dtype (float32 on a CPU), not the served kernels.
"""

from __future__ import annotations

import torch
from torch import nn

from quantstudy.numerics import quantize_activations
from quantstudy.schemes import ActivationQuant


class FakeQuantLinear(nn.Module):
    """A linear layer computing with dequantized weights and, for W8A8, activations
    quantized per token on the fly: numerically what an engine's quantized GEMM does."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activations: ActivationQuant | None,
                 input_global_scale: torch.Tensor | None = None):
        super().__init__()
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.activations = activations
        # NVFP4 W4A4: the static global scale under the dynamic FP8 group scales of the inputs
        self.input_global_scale = input_global_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations is not None:
            x = quantize_activations(x, self.activations, self.input_global_scale)
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        act = "a16" if self.activations is None else f"a{self.activations.num_bits}-{self.activations.type.value}"
        return f"in={self.in_features}, out={self.out_features}, {act}"


def install_fake_quant(model: nn.Module, weights: dict[str, torch.Tensor], activations: ActivationQuant | None,
                       input_global_scales: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Replace each named linear in place by a FakeQuantLinear holding `weights[name]` (and, for
    NVFP4 activations, `input_global_scales[name]`)."""
    scales = input_global_scales or {}
    for name, weight in weights.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        bias = None if old.bias is None else old.bias.detach()
        setattr(parent, child, FakeQuantLinear(weight.to(old.weight.dtype), bias, activations, scales.get(name)))
    return model
