"""Round-to-nearest as a registered algorithm: abs-max scales, no calibration data."""

from __future__ import annotations

from dataclasses import dataclass

from quantstudy.quantize.recipes import Algorithm, register
from quantstudy.quantize.fp4 import fp_rtn, shared_global_scales
from quantstudy.quantize.rtn import rtn_quantize
from quantstudy.schemes import Strategy


@dataclass(frozen=True)
class RTNConfig:
    pass


@register
class RTN(Algorithm):
    name = "rtn"
    config = RTNConfig
    needs_calibration = False

    def quantize_layer(self, work, config: RTNConfig):
        args = work.scheme.weights
        if args.strategy is Strategy.TENSOR_GROUP:   # NVFP4: fused linears share a global scale
            weights = {n: work.module(n).weight.data for n in work.linears}
            return {n: fp_rtn(weights[n], args, g) for n, g in shared_global_scales(weights).items()}
        return {n: rtn_quantize(work.module(n).weight.data, args, work.scale_dtype)
                for n in work.linears}
