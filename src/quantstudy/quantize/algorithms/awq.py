"""AWQ as a registered algorithm: per-channel scales for the linears sharing an input, folded
into the operation before them (the family's mappings), then a per-group clip search.

Statistics are each linear's input |x| mean and Gram matrix X^T X over every calibration
token (`quantize.awq.input_statistics`), so the losses need no token subsampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantstudy.errors import QuantstudyError
from quantstudy.quantize.awq import awq_clip_ratios, awq_quantize, awq_search_scales, input_statistics
from quantstudy.quantize.layerwise import fold_mapping, foldable
from quantstudy.quantize.recipes import Algorithm, register
from quantstudy.quantize.fp4 import shared_global_scales
from quantstudy.schemes import GROUPED, Scheme, Strategy


@dataclass(frozen=True)
class AWQConfig:
    pass


@register
class AWQ(Algorithm):
    name = "awq"
    config = AWQConfig
    needs_mappings = True

    def check(self, scheme: Scheme) -> None:
        if scheme.weights.strategy is Strategy.BLOCK:
            raise QuantstudyError(f"AWQ does not apply to block-wise scales ({scheme.name}); use --algo gptq or rtn")

    def quantize_layer(self, work, config: AWQConfig):
        stats: dict[str, list] = {}

        def record(name, x):
            abs_sum, gram, n = input_statistics(x)
            if name in stats:
                stats[name][0] += abs_sum
                stats[name][1] += gram
                stats[name][2] += n
            else:
                stats[name] = [abs_sum, gram, n]

        work.collect(work.linears, record)
        abs_mean = {n: v[0] / v[2] for n, v in stats.items()}
        grams = {n: v[1] for n, v in stats.items()}
        args = work.scheme.weights
        family = work.family
        with torch.no_grad():
            for mapping in family.norm_mappings + family.linear_mappings:
                targets = [t for t in mapping.targets if t in grams]
                if not targets:
                    continue   # every target is left unquantized: nothing to balance
                if not foldable(work.layer, mapping, targets):
                    continue  # e.g. v_proj -> o_proj under grouped-query attention: cannot fold
                weights = [work.module(t).weight.data for t in targets]
                s = awq_search_scales(abs_mean[targets[0]], grams[targets[0]], weights, args, work.scale_dtype)
                fold_mapping(work.layer, mapping, targets, s, family)
                for t in targets:
                    grams[t] = grams[t] / torch.outer(s, s)  # the inputs are now x / s
            out = {}
            # NVFP4: fused linears (q/k/v, gate/up) share one global scale, as vLLM reads one
            g = (shared_global_scales({n: work.module(n).weight.data for n in work.linears})
                 if args.strategy is Strategy.TENSOR_GROUP else {})
            for n in work.linears:
                w = work.module(n).weight.data
                clip = (awq_clip_ratios(grams[n], w, args, work.scale_dtype, global_scale=g.get(n))
                        if args.strategy in GROUPED else None)
                out[n] = awq_quantize(w, args, work.scale_dtype, clip, global_scale=g.get(n))
        return out
