"""GPTQ as a registered algorithm: Hessians of each linear's inputs from the layer's
calibration activations, then `quantize.gptq.gptq_quantize` per weight.

Linears fed the same input (q/k/v, gate/up) share one Hessian, and since GPTQ treats output
rows independently they are quantized as one row-stacked matrix: one Cholesky and one column
sweep instead of three (as llm-compressor's batched quantization). Tensor-wise scales would
couple the stacked rows, so those schemes run per linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantstudy.quantize.gptq import accumulate_hessian, batch_xtx, gptq_quantize
from quantstudy.quantize.recipes import Algorithm, register
from quantstudy.schemes import Strategy


@dataclass(frozen=True)
class GPTQConfig:
    dampening: float = 0.01
    actorder: bool = True
    mse_clip: bool = True
    block_size: int = 128


@register
class GPTQ(Algorithm):
    name = "gptq"
    config = GPTQConfig
    one_pass = True

    def quantize_layer(self, work, config: GPTQConfig):
        scheme = work.scheme
        hessians: dict[str, tuple[torch.Tensor | None, int]] = {}
        members: dict[str, list[str]] = {}  # first linear seen with an input -> all linears with it
        last: dict = {}

        def record(name, x):
            # The same input tensor (q/k/v, gate/up) is recognised by its storage. `last` keeps the
            # tensor itself alive: were it freed, the next batch's input (or o_proj's, of the same
            # shape) could be allocated at the same address and be taken for it, reusing a stale
            # X^T X -- a wrong Hessian that depended on the allocator, so runs differed.
            key = (x.data_ptr(), tuple(x.shape))
            if last.get("key") != key:
                last.update(key=key, x=x, xtx=batch_xtx(x), owner=name)
            owner = last["owner"] if scheme.weights.strategy is not Strategy.TENSOR else name
            if owner == name:
                h, n = hessians.get(name, (None, 0))
                hessians[name] = accumulate_hessian(h, n, x, last["xtx"])
            group = members.setdefault(owner, [owner])
            if name not in group:
                group.append(name)

        work.collect(work.linears, record)
        out = {}
        for owner, names in members.items():
            out.update(self._solve(work, names, hessians[owner][0], config))
        return out

    def quantize_group(self, work, names: list[str], h: torch.Tensor, config: GPTQConfig):
        """The one-pass walk's entry: linears `names` share an input whose H = 2/N X^T X is `h`."""
        if work.scheme.weights.strategy is Strategy.TENSOR:   # a tensor-wise scale couples stacked rows
            out = {}
            for name in names:
                out.update(self._solve(work, [name], h, config))
            return out
        return self._solve(work, names, h, config)

    @staticmethod
    def _solve(work, names: list[str], hessian: torch.Tensor, config: GPTQConfig):
        weights = [work.module(n).weight.data for n in names]
        stacked = gptq_quantize(torch.cat(weights), hessian, work.scheme.weights, work.scale_dtype,
                                block_size=config.block_size, dampening=config.dampening,
                                actorder=config.actorder, mse_clip=config.mse_clip,
                                layer=f"{work.prefix}.{names[0]}")
        return dict(zip(names, stacked.split_rows([w.shape[0] for w in weights])))
