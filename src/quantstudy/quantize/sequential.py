"""Sequential layer-wise calibration, as llm-compressor's sequential pipeline.

The decoder runs one layer at a time on cached inputs: capture what enters layer 0,
then for each layer (1) smooth it if the recipe says so, (2) let the recipe's registered
algorithm collect the statistics it needs with hooks on that layer only and choose the
quantized values, (3) run the *quantized* layer to get the next layer's inputs, so later
layers calibrate on the errors earlier ones make. Activations are kept for one layer
at a time, never the whole model's.

The maths lives in gptq.py, awq.py, smoothquant.py (tensors in, tensors out); the
algorithms' layer handlers in algorithms/; which norm feeds which linears in
`models.families`. This module only walks layers and copies weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from quantstudy.errors import QuantstudyError
from quantstudy.models.families import Family, family_for
from quantstudy.numerics import QuantizedWeight
from quantstudy.quantize.layerwise import LayerWork, capture_layer0_inputs, fold_mapping, has_module, run_layer
from quantstudy.quantize.model import LayerReport, is_ignored
from quantstudy.quantize.recipes import Recipe
from quantstudy.quantize.rtn import rtn_quantize
from quantstudy.quantize.smoothquant import smoothing_scales
from quantstudy.schemes import Scheme


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise QuantstudyError("could not find the decoder layers of this model for sequential calibration")


def family_of(model: nn.Module, purpose: str = "SmoothQuant and AWQ") -> Family:
    """The family table of a model: its config's architectures, else its class (a model built
    from a config in memory names no architecture)."""
    return family_for(getattr(model.config, "architectures", None) or [type(model).__name__], purpose)


def check_mappings(layer: nn.Module, family: Family, prefix: str) -> None:
    """Every module the family maps must exist in the layer: a missing one is the wrong table
    for this model, which must stop the run rather than silently skip the smoothing."""
    for m in family.norm_mappings + family.linear_mappings:
        for name in (m.prev, *m.targets):
            if not has_module(layer, name):
                raise QuantstudyError(f"{prefix} has no module '{name}', which the {family.name} family's mappings "
                                      f"name: this model does not have the {family.name} layout")


def smooth_layer(work: LayerWork, alpha: float) -> None:
    """SmoothQuant on one layer: activation abs-max of each mapped norm's output, folded in."""
    norms = work.family.norm_mappings
    absmax: dict[str, torch.Tensor] = {}

    def record(name, x):
        m = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
        absmax[name] = m if name not in absmax else torch.maximum(absmax[name], m)

    work.collect([m.prev for m in norms], record, outputs=True)
    for m in norms:
        weights = [work.module(t).weight.data for t in m.targets]
        fold_mapping(work.layer, m, list(m.targets), smoothing_scales(absmax[m.prev], weights, alpha), work.family)


def _commit(module: nn.Linear, name: str, qw: QuantizedWeight, qweights: dict, reports: list) -> None:
    """Record a quantized linear and make the module compute with its dequantized weight."""
    w = module.weight.data
    reports.append(LayerReport.measure(name, w, qw))
    w.copy_(qw.dequantize(w.dtype))
    qweights[name] = qw


@torch.no_grad()
def quantize_sequential(
    model: nn.Module,
    scheme: Scheme,
    recipe: Recipe,
    calib_ids: torch.Tensor,
    scale_dtype: torch.dtype,
    batch_size: int = 8,
    on_layer: Callable[[str], None] | None = None,
) -> tuple[dict[str, QuantizedWeight], list[LayerReport]]:
    """Calibrate and quantize layer by layer. Modifies `model` in place: smoothing is
    folded in and each quantized linear holds its dequantized weight afterwards.
    Per-layer SQNR is measured against the weight the algorithm received (after any
    smoothing / AWQ scaling)."""
    recipe.check(scheme)
    family = family_of(model) if recipe.needs_mappings else None
    algorithm, config = recipe.handler, recipe.algorithm_config()
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    if family is not None:
        check_mappings(layers[0], family, f"{prefix}.0")
    batches = capture_layer0_inputs(model, layers, calib_ids, batch_size)
    qweights: dict[str, QuantizedWeight] = {}
    reports: list[LayerReport] = []
    for index, layer in enumerate(layers):
        layer_prefix = f"{prefix}.{index}"
        local = [n for n, m in layer.named_modules()
                 if isinstance(m, nn.Linear) and not is_ignored(f"{layer_prefix}.{n}", scheme.ignore)]
        work = LayerWork(layer, batches, local, scheme, scale_dtype, layer_prefix, family)
        if recipe.smoothquant is not None:
            smooth_layer(work, recipe.smoothquant)
        for n, qw in algorithm.quantize_layer(work, config).items():
            _commit(layer.get_submodule(n), f"{layer_prefix}.{n}", qw, qweights, reports)
        batches = run_layer(layer, batches)  # quantized outputs feed the next layer
        if on_layer:
            on_layer(layer_prefix)
    # targeted linears outside the decoder layers (e.g. lm_head when not ignored): RTN
    for name, module in model.named_modules():
        if (isinstance(module, nn.Linear) and name not in qweights and not name.startswith(prefix + ".")
                and not is_ignored(name, scheme.ignore)):
            _commit(module, name, rtn_quantize(module.weight.data, scheme.weights, scale_dtype), qweights, reports)
    return qweights, reports


@torch.no_grad()
def smooth_model(model: nn.Module, calib_ids: torch.Tensor, alpha: float, batch_size: int = 8) -> None:
    """SmoothQuant alone: fold smoothing into every layer, float weights otherwise."""
    family = family_of(model, "SmoothQuant")
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    check_mappings(layers[0], family, f"{prefix}.0")
    batches = capture_layer0_inputs(model, layers, calib_ids, batch_size)
    for index, layer in enumerate(layers):
        smooth_layer(LayerWork(layer, batches, [], None, None, f"{prefix}.{index}", family), alpha)
        batches = run_layer(layer, batches)
