"""Walking a model: which linears a scheme quantizes, round-to-nearest over them (the
calibrated algorithms walk layer by layer in sequential.py), and the in-memory quantized
model (`apply_fake_quant`, through `inference.fake_quant`).

The algorithms themselves (rtn, gptq, ...) never see a module; they get tensors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from quantstudy.errors import QuantstudyError
from quantstudy.inference.fake_quant import install_fake_quant
from quantstudy.numerics import QuantizedWeight, sqnr_from, sum_squares
from quantstudy.quantize.rtn import rtn_quantize
from quantstudy.schemes import GROUPED, Scheme, Strategy


def is_ignored(name: str, ignore: tuple[str, ...]) -> bool:
    for pattern in ignore:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
        elif name == pattern or name.endswith("." + pattern):
            return True
    return False


def quantizable_linears(model: nn.Module, scheme: Scheme) -> list[tuple[str, nn.Linear]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not is_ignored(name, scheme.ignore)
    ]


def _divisors_of_all(widths: list[int]) -> list[int]:
    g = 0
    for w in widths:
        g = math.gcd(g, w)
    return [d for d in range(8, g + 1) if g % d == 0 and d % 8 == 0]


def check_shapes(linears: list[tuple[str, nn.Linear]], scheme: Scheme) -> None:
    """Fail before any work if nothing is targeted or a group or block does not tile every layer."""
    if not linears:
        raise QuantstudyError("the scheme targets no linear layer in this model (check 'ignore')")
    w = scheme.weights
    cols = [m.in_features for _, m in linears]
    if w.strategy in GROUPED:
        bad = [(n, m.in_features) for n, m in linears if m.in_features % w.group_size]
        if bad:
            name, width = bad[0]
            ok = ", ".join(map(str, _divisors_of_all(cols))) or "none"
            raise QuantstudyError(
                f"group size {w.group_size} does not divide {name}'s input width {width} "
                f"({len(bad)} layers affected); group sizes that fit every layer: {ok} — pass --group-size"
            )
    if w.strategy is Strategy.BLOCK:
        br, bc = w.block
        bad = [(n, m.out_features, m.in_features) for n, m in linears
               if m.out_features % br or m.in_features % bc]
        if bad:
            name, rows, width = bad[0]
            ok = ", ".join(map(str, _divisors_of_all(cols + [m.out_features for _, m in linears]))) or "none"
            raise QuantstudyError(
                f"block {br}x{bc} does not tile {name}'s weight {rows}x{width} ({len(bad)} layers affected); "
                f"square blocks that fit every layer: {ok} — pass --group-size"
            )
    a = scheme.activations
    if a is not None and a.strategy in GROUPED:
        bad = [(n, m.in_features) for n, m in linears if m.in_features % a.group_size]
        if bad:
            raise QuantstudyError(
                f"activation group {a.group_size} does not divide {bad[0][0]}'s input width {bad[0][1]} — pass --group-size"
            )


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    sqnr_db: float
    signal_energy: float  # sum of squared weights, to aggregate SQNR over layers exactly

    @classmethod
    def measure(cls, name: str, w: torch.Tensor, qw: QuantizedWeight) -> "LayerReport":
        """Report how well `qw` reproduces the float weight `w`."""
        signal = sum_squares(w)   # once: it is both the SQNR's numerator and the reported energy
        return cls(name, tuple(w.shape), sqnr_from(signal, sum_squares(w, qw.dequantize())), signal)


def aggregate_sqnr_db(layers: list[tuple[float, float]]) -> float:
    """Whole-model SQNR from (signal energy, SQNR dB) per layer: total signal over total noise."""
    signal = sum(e for e, _ in layers)
    noise = sum(e * 10 ** (-db / 10) for e, db in layers)
    return float("inf") if noise == 0 else 10 * math.log10(signal / noise)


def quantize_model_weights(
    model: nn.Module,
    scheme: Scheme,
    scale_dtype: torch.dtype = torch.bfloat16,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, QuantizedWeight], list[LayerReport]]:
    """Round-to-nearest for every targeted linear's weight; the model is left untouched."""
    linears = quantizable_linears(model, scheme)
    check_shapes(linears, scheme)
    qweights: dict[str, QuantizedWeight] = {}
    reports: list[LayerReport] = []
    with torch.no_grad():
        shared = {}
        if scheme.weights.strategy is Strategy.TENSOR_GROUP:   # NVFP4: fused linears share a global scale
            from quantstudy.quantize.fp4 import shared_global_scales

            shared = shared_global_scales({n: m.weight.detach() for n, m in linears})
        for name, module in linears:
            w = module.weight.detach()
            if name in shared:
                from quantstudy.quantize.fp4 import fp_rtn

                qweights[name] = fp_rtn(w, scheme.weights, shared[name])
            else:
                qweights[name] = rtn_quantize(w, scheme.weights, scale_dtype)
            reports.append(LayerReport.measure(name, w, qweights[name]))
            if progress:
                progress(name)
    return qweights, reports


def apply_fake_quant(model: nn.Module, qweights: dict[str, QuantizedWeight], scheme: Scheme) -> nn.Module:
    """The in-memory quantized model: dequantized weights, activations quantized on the fly."""
    weights = {name: qw.dequantize() for name, qw in qweights.items()}
    globals_ = {name: qw.input_global_scale for name, qw in qweights.items() if qw.input_global_scale is not None}
    return install_fake_quant(model, weights, scheme.activations, globals_)
