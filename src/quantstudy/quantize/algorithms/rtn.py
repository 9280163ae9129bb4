"""Round-to-nearest as a registered algorithm: abs-max scales, no calibration data."""

from __future__ import annotations

from dataclasses import dataclass

from quantstudy.quantize.recipes import Algorithm, register
from quantstudy.quantize.rtn import rtn_quantize


@dataclass(frozen=True)
class RTNConfig:
    pass


@register
class RTN(Algorithm):
    name = "rtn"
    config = RTNConfig
    needs_calibration = False

    def quantize_layer(self, work, config: RTNConfig):
        return {n: rtn_quantize(work.module(n).weight.data, work.scheme.weights, work.scale_dtype)
                for n in work.linears}
