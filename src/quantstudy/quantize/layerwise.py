"""What the layer-by-layer walker does to one decoder layer: run it on cached inputs, watch
its linears' activations with hooks, and hand an algorithm the layer's work (`LayerWork`).

The walker (`sequential`) owns the order of layers; the algorithms (`algorithms/`) own
what to compute from a layer's activations; this module is the plumbing between them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from quantstudy.models.families import Family, Mapping
from quantstudy.quantize.smoothquant import fold_into_linear, fold_smoothing
from quantstudy.schemes import Scheme

Batches = Iterable[tuple[torch.Tensor, dict]]   # (hidden states, the layer's keyword arguments) per batch


def forward_precision(gemm_dtype: torch.dtype | None, device: torch.device | str = "cpu"):
    """The context calibration forwards run in: GEMMs in `gemm_dtype` under autocast while
    weights, norms and the residual stream stay in their own dtype (float32 master weights on
    a CPU with native bf16: the algorithms never see rounded weights). None: as they are."""
    if gemm_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=gemm_dtype)


class _SeenAll(Exception):
    pass


def collect(layer, batches: Batches, names: list[str], fn: Callable[[str, torch.Tensor], None],
            outputs: bool = False, gemm_dtype: torch.dtype | None = None, stop_early: bool = False) -> None:
    """Run the layer with hooks calling fn(name, input-or-output activations). The hooks run
    outside any autocast: statistics (Hessians, Gram matrices) are float32 products. With
    `stop_early` a batch stops once every watched module has run in it: SmoothQuant watches
    the two norms, so the MLP after the second never needs computing."""
    handles, seen = [], set()
    device = next(layer.parameters()).device
    for name in names:
        def hook(_m, inp, out, _name=name):
            with torch.autocast(device.type, enabled=False):
                fn(_name, (out if outputs else inp[0]).detach())
            seen.add(_name)
            if stop_early and len(seen) == len(names):
                raise _SeenAll
        handles.append(layer.get_submodule(name).register_forward_hook(hook))
    try:
        with forward_precision(gemm_dtype, device):
            for hidden, kwargs in batches:
                seen.clear()
                try:
                    layer(hidden, **kwargs)
                except _SeenAll:
                    pass
    finally:
        for h in handles:
            h.remove()


def has_module(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def prev_rows(prev_weight: torch.Tensor, mapping: Mapping) -> slice:
    """The rows of a (possibly fused) preceding linear whose outputs the mapping's targets read."""
    n = prev_weight.shape[0]
    return slice(round(mapping.prev_rows[0] * n), round(mapping.prev_rows[1] * n))


def foldable(layer: nn.Module, mapping: Mapping, targets: list[str]) -> bool:
    """Whether a scale can move across the mapping: the prev's output width (its mapped rows)
    must be the targets' input width -- not so for v -> o under grouped-query attention."""
    prev = layer.get_submodule(mapping.prev).weight
    width = prev.shape[0] if prev.dim() == 1 else len(range(prev.shape[0])[prev_rows(prev, mapping)])
    return width == layer.get_submodule(targets[0]).weight.shape[1]


@torch.no_grad()
def fold_mapping(layer: nn.Module, mapping: Mapping, targets: list[str], scales: torch.Tensor, family: Family) -> None:
    """Divide the mapping's prev output by `scales` and multiply its targets' input columns by
    them: the float layer computes the same function (SmoothQuant's and AWQ's fold)."""
    prev = layer.get_submodule(mapping.prev)
    weights = [layer.get_submodule(t).weight.data for t in targets]
    if prev.weight.dim() == 1:   # a norm's gain
        fold_smoothing(prev.weight.data, weights, scales, family.norm_offset)
    else:
        bias = None if prev.bias is None else prev.bias.data
        fold_into_linear(prev.weight.data, bias, prev_rows(prev.weight, mapping), weights, scales)


@dataclass
class LayerWork:
    """One decoder layer as an algorithm sees it."""

    layer: nn.Module
    batches: Batches               # its calibration inputs (`activations.LayerBatches`), iterable again and again
    linears: list[str]             # the linears to quantize (names inside the layer)
    scheme: Scheme
    scale_dtype: torch.dtype
    prefix: str                    # the layer's name in the model (for messages)
    family: Family | None          # norm/linear mappings, where the recipe needs them
    gemm_dtype: torch.dtype | None = None   # forwards' GEMM dtype under autocast (None: the weights')

    def collect(self, names: list[str], fn: Callable[[str, torch.Tensor], None], outputs: bool = False,
                stop_early: bool = False) -> None:
        collect(self.layer, self.batches, names, fn, outputs, self.gemm_dtype, stop_early)

    def module(self, name: str) -> nn.Module:
        return self.layer.get_submodule(name)
