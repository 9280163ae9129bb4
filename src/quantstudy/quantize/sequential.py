"""The layer-by-layer walker, as llm-compressor's sequential pipeline, for a model in memory
or streamed from its files.

What enters every decoder layer is captured once (the embedding runs; the layers are
replaced by recorders that keep their inputs and keyword arguments: masks, position
embeddings, per layer, so sliding-window layers keep their own masks). Then for each layer:
(1) its weights are made resident (`Weights`: a no-op for a model in memory, read from the
shards when streaming), (2) it is smoothed if the recipe says so, (3) the recipe's
registered algorithm collects the statistics it needs with hooks on that layer only and
chooses the quantized values, (4) they go to the `Sink` (kept, or compressed and written),
(5) the *quantized* layer runs to give the next layer's inputs -- later layers calibrate on
the errors earlier ones make -- and (6) the layer's weights are released. Activations are
kept for one layer at a time (`activations.Activations`, spilled to disk past a budget).

GPTQ takes the true-sequential walk instead where it can (`one_pass`): steps (2)-(5) in a
single forward of the layer, each input group smoothed and quantized when every batch has
reached it, so the layer runs once rather than twice (`Recipe.true_sequential`).

The maths lives in gptq.py, awq.py, smoothquant.py (tensors in, tensors out); the
algorithms' layer handlers in algorithms/; which norm feeds which linears in
`models.families`. This module only walks layers and moves tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from quantstudy.errors import QuantstudyError
from quantstudy.inference.kv_quant import attention_modules, observing
from quantstudy.models.families import Family, family_for
from quantstudy.numerics import QuantizedWeight
from quantstudy.quantize.activations import Activations, LayerBatches
from quantstudy.quantize.fp4 import InputAbsMax
from quantstudy.quantize.layerwise import LayerWork, fold_mapping, forward_precision, has_module
from quantstudy.quantize.model import LayerReport, is_ignored
from quantstudy.quantize.one_pass import DEFAULT_BUDGET, input_groups, live_bytes, run_layer
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


def layers_prefix(model: nn.Module, layers: nn.ModuleList) -> str:
    return next(name for name, module in model.named_modules() if module is layers)


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

    work.collect([m.prev for m in norms], record, outputs=True, stop_early=True)
    for m in norms:
        weights = [work.module(t).weight.data for t in m.targets]
        fold_mapping(work.layer, m, list(m.targets), smoothing_scales(absmax[m.prev], weights, alpha), work.family)


# ---- where weights come from and where quantized values go -------------------------------------

class Weights(Protocol):
    """Makes a module's parameters resident for its turn, and releases them after."""

    def materialize(self, module: nn.Module, prefix: str) -> None: ...

    def release(self, module: nn.Module) -> None: ...


class ResidentWeights:
    """A model already in memory: nothing to read, nothing to free."""

    def materialize(self, module: nn.Module, prefix: str) -> None:
        pass

    def release(self, module: nn.Module) -> None:
        pass


class Sink(Protocol):
    def add_linear(self, name: str, qw: QuantizedWeight, module: nn.Linear) -> None: ...

    def add(self, name: str, tensor: torch.Tensor) -> None: ...


class KeepQuantized:
    """Collects the quantized values by name (the in-memory path writes them out later)."""

    def __init__(self):
        self.qweights: dict[str, QuantizedWeight] = {}
        self.kv_scales: dict[str, torch.Tensor] = {}   # not in the model's state dict: kept for the writer

    def add_linear(self, name: str, qw: QuantizedWeight, module: nn.Linear) -> None:
        self.qweights[name] = qw

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name.endswith((".k_scale", ".v_scale")):
            self.kv_scales[name] = tensor


def commit(module: nn.Linear, name: str, qw: QuantizedWeight, sink: Sink, reports: list) -> None:
    """Record a quantized linear and make the module compute with its dequantized weight."""
    w = module.weight.data
    reports.append(LayerReport.measure(name, w, qw))
    w.copy_(qw.dequantize(w.dtype))
    sink.add_linear(name, qw, module)


# ---- capture -----------------------------------------------------------------------------------

class _Stop(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for a decoder layer during capture: keeps its inputs, passes hidden states on."""

    def __init__(self, index: int, last: int, sink: list):
        super().__init__()
        self.index, self.last, self.sink = index, last, sink

    def forward(self, hidden_states, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "use_cache")}
        self.sink.append((self.index, hidden_states.detach() if self.index == 0 else None, kwargs))
        if self.index == self.last:
            raise _Stop
        return hidden_states


def capture_inputs(model, layers: nn.ModuleList, calib_ids: torch.Tensor, batch_size: int,
                   acts: Activations, device=None, gemm_dtype: torch.dtype | None = None) -> list[list[dict]]:
    """Run the model up to its decoder layers batch by batch: layer 0's hidden states go into
    `acts`; every layer's keyword arguments per batch are returned (their tensors are shared
    between layers that receive the same ones)."""
    real = list(layers)
    sink: list = []
    for i in range(len(layers)):
        layers[i] = _Recorder(i, len(real) - 1, sink)
    kwargs: list[list[dict]] = [[] for _ in real]
    try:
        for start in range(0, calib_ids.shape[0], batch_size):
            sink.clear()
            batch = calib_ids[start:start + batch_size]
            try:
                with forward_precision(gemm_dtype, device or "cpu"):
                    model(batch if device is None else batch.to(device), use_cache=False)
            except _Stop:
                pass
            for index, hidden, kw in sink:
                if hidden is not None:
                    _check_finite(hidden, "the embedding")
                    acts.append(hidden)
                kwargs[index].append(kw)
    finally:
        for i, layer in enumerate(real):
            layers[i] = layer
    return kwargs


# ---- the walk ----------------------------------------------------------------------------------

def one_pass_applies(algorithm, recipe: Recipe, layers: nn.ModuleList, hidden: Activations,
                     max_memory: int | None) -> bool:
    """Whether the true-sequential walk (one forward per layer) runs: asked for, an algorithm
    that solves per input group, activations in memory, and what every batch holds at once at
    a stop point within the budget. Otherwise the batch-by-batch two-forward walk."""
    if not (recipe.true_sequential and algorithm.one_pass) or hidden.spilled or len(hidden) == 0:
        return False
    tokens, first = 0, None
    for h in hidden:
        tokens += h.shape[0] * h.shape[1]
        first = h if first is None else first
    widest = max(max(m.weight.shape) for m in layers[0].modules() if isinstance(m, nn.Linear))
    return live_bytes(tokens, first.shape[-1], widest, first.element_size()) <= (max_memory or DEFAULT_BUDGET)


def _attention_of(layer: nn.Module, prefix: str) -> tuple[str, nn.Module]:
    found = attention_modules(layer)
    if len(found) != 1:
        raise QuantstudyError(f"{prefix}: found {len(found)} attention modules with k_proj/qkv_proj, need one "
                              "for an FP8 KV cache")
    return found[0]


def _check_finite(t: torch.Tensor, where: str) -> None:
    """Calibration activations must be finite: a NaN or Inf here would surface later as a
    Hessian that is "not positive definite", a symptom that hides the cause."""
    # one reduction first (a NaN or Inf anywhere makes the float32 sum non-finite); the
    # element-wise test only where it is, to tell a float32 overflow of the sum from the real thing
    if not bool(torch.isfinite(t.sum(dtype=torch.float32))) and not bool(torch.isfinite(t).all()):
        raise QuantstudyError(f"the calibration activations out of {where} hold NaN or infinite values: the model "
                              "overflows on this calibration text in its forward dtype (try --forward-dtype float32, "
                              "or other calibration data)")


@torch.no_grad()
def walk(model: nn.Module, weights: Weights, sink: Sink, scheme: Scheme, recipe: Recipe, calib_ids: torch.Tensor,
         scale_dtype: torch.dtype, batch_size: int = 8, device=None, max_memory: int | None = None,
         on_layer: Callable[[str], None] | None = None,
         after_capture: Callable[[], None] | None = None,
         gemm_dtype: torch.dtype | None = None, stats: dict | None = None) -> list[LayerReport]:
    """Calibrate and quantize every decoder layer in turn; returns per-linear reports. The
    layers' float weights are changed on the way (smoothing folded in, quantized linears
    dequantized) and each layer's final tensors go to `sink`. `gemm_dtype`: the forwards'
    GEMMs under autocast (bf16 on CPUs that multiply it natively), statistics stay float32.
    `stats` receives how it went: forwards_per_layer (1: the true-sequential walk, 2: batch by batch)."""
    recipe.check(scheme)
    family = family_of(model) if recipe.needs_mappings else None
    algorithm, config = recipe.handler, recipe.algorithm_config()
    layers = decoder_layers(model)
    prefix = layers_prefix(model, layers)
    if family is not None:
        check_mappings(layers[0], family, f"{prefix}.0")
    hidden = Activations(max_memory, device or "cpu")
    layer_kwargs = capture_inputs(model, layers, calib_ids, batch_size, hidden, device, gemm_dtype)
    if after_capture:
        after_capture()   # what only the capture needed (a streamed model's embedding) can go
    one_pass = one_pass_applies(algorithm, recipe, layers, hidden, max_memory)
    if stats is not None:
        stats["forwards_per_layer"] = 1 if one_pass else 2
    reports: list[LayerReport] = []
    probed: dict[tuple, list[list[str]]] = {}   # (layer class, its linears) -> input groups
    kv = scheme.kv_cache
    # NVFP4 W4A4: each linear's static input global scale, from the inputs of the forward
    # that runs the quantized layer; its tensors go to the sink once that forward is over
    input_scales = scheme.static_input_scales
    for index, layer in enumerate(layers):
        layer_prefix = f"{prefix}.{index}"
        # FP8 KV cache: max|K| (after RoPE) and max|V| of the forward that runs the *quantized*
        # layer -- the one-pass forward (q/k/v are quantized before attention runs) or the
        # propagating one -- so the scales fit what the deployed model caches.
        attn = _attention_of(layer, layer_prefix) if kv is not None else None
        watch = observing(attn[1], kv.per_head) if kv is not None else contextlib.nullcontext()
        weights.materialize(layer, layer_prefix)
        local = [n for n, m in layer.named_modules()
                 if isinstance(m, nn.Linear) and not is_ignored(f"{layer_prefix}.{n}", scheme.ignore)]
        batches = LayerBatches(hidden, layer_kwargs[index])
        work = LayerWork(layer, batches, local, scheme, scale_dtype, layer_prefix, family, gemm_dtype)
        quantized = set()
        held = KeepQuantized() if input_scales else sink
        inputs = InputAbsMax(layer, local) if input_scales else contextlib.nullcontext()

        def put(n: str, qw: QuantizedWeight) -> None:
            commit(layer.get_submodule(n), f"{layer_prefix}.{n}", qw, held, reports)
            quantized.add(n)

        if one_pass:   # one forward: quantized group by group on the way through
            runs = list(batches)
            # Layers of one class with the same linears share their dataflow: probed once (a
            # probe forward was ~5% of the run). run_layer still fails loudly if a layer's
            # linears read other inputs than its groups say, or if a group never runs.
            key = (type(layer), tuple(local))
            if key not in probed:
                probed[key] = input_groups(layer, runs[0][0], runs[0][1], local, gemm_dtype)
            groups = [list(g) for g in probed[key]]
            with watch as observer, inputs:
                outs = run_layer(work, runs, groups, lambda w, names, h: algorithm.quantize_group(w, names, h, config),
                                 put, recipe.smoothquant)
            del runs
        else:
            if recipe.smoothquant is not None:
                smooth_layer(work, recipe.smoothquant)
            for n, qw in algorithm.quantize_layer(work, config).items():
                put(n, qw)
        for name, p in layer.named_parameters():   # norms, as smoothed; the quantized linears went above
            if name.rpartition(".")[0] not in quantized:
                sink.add(f"{layer_prefix}.{name}", p.data)
        if one_pass:   # the pass's outputs are the quantized layer's: they feed the next layer
            nxt = Activations(max_memory, device or "cpu")
            for out in outs:
                _check_finite(out, layer_prefix)
                nxt.append(out)
            del outs
            hidden.close()
            hidden = nxt
        elif index + 1 < len(layers) or kv is not None or input_scales:   # quantized outputs feed the next layer
            nxt = Activations(max_memory, device or "cpu")
            with watch as observer, inputs, forward_precision(gemm_dtype, device or "cpu"):
                for h, kw in batches:
                    out = layer(h, **kw)
                    out = out[0] if isinstance(out, tuple) else out
                    _check_finite(out, layer_prefix)
                    nxt.append(out)
            hidden.close()
            hidden = nxt
        if input_scales:
            try:
                scales = inputs.global_scales()
            except ValueError as exc:
                raise QuantstudyError(f"{layer_prefix}: {exc}") from None
            for name, qw in held.qweights.items():
                n = name.removeprefix(layer_prefix + ".")
                sink.add_linear(name, dataclasses.replace(qw, input_global_scale=scales[n]), layer.get_submodule(n))
        if kv is not None:
            k_scale, v_scale = observer.scales(scale_dtype)
            sink.add(f"{layer_prefix}.{attn[0]}.k_scale", k_scale)
            sink.add(f"{layer_prefix}.{attn[0]}.v_scale", v_scale)
        weights.release(layer)
        if on_layer:
            on_layer(layer_prefix)
    hidden.close()
    return reports


@torch.no_grad()
def quantize_sequential(
    model: nn.Module,
    scheme: Scheme,
    recipe: Recipe,
    calib_ids: torch.Tensor,
    scale_dtype: torch.dtype,
    batch_size: int = 8,
    on_layer: Callable[[str], None] | None = None,
    stats: dict | None = None,
) -> tuple[dict[str, QuantizedWeight], list[LayerReport]]:
    """The walk over a model in memory. Modifies `model` in place: smoothing is folded in and
    each quantized linear holds its dequantized weight afterwards. Per-layer SQNR is measured
    against the weight the algorithm received (after any smoothing / AWQ scaling)."""
    keep = KeepQuantized()
    reports = walk(model, ResidentWeights(), keep, scheme, recipe, calib_ids, scale_dtype, batch_size,
                   on_layer=on_layer, stats=stats)
    if stats is not None and keep.kv_scales:
        stats["kv_scales"] = keep.kv_scales
    prefix = layers_prefix(model, decoder_layers(model))
    # targeted linears outside the decoder layers (e.g. lm_head when not ignored): RTN
    for name, module in model.named_modules():
        if (isinstance(module, nn.Linear) and name not in keep.qweights and not name.startswith(prefix + ".")
                and not is_ignored(name, scheme.ignore)):
            commit(module, name, rtn_quantize(module.weight.data, scheme.weights, scale_dtype), keep, reports)
    return keep.qweights, reports


@torch.no_grad()
def smooth_model(model: nn.Module, calib_ids: torch.Tensor, alpha: float, batch_size: int = 8) -> None:
    """SmoothQuant alone: fold smoothing into every layer, float weights otherwise."""
    family = family_of(model, "SmoothQuant")
    layers = decoder_layers(model)
    prefix = layers_prefix(model, layers)
    check_mappings(layers[0], family, f"{prefix}.0")
    hidden = Activations()
    layer_kwargs = capture_inputs(model, layers, calib_ids, batch_size, hidden)
    for index, layer in enumerate(layers):
        batches = LayerBatches(hidden, layer_kwargs[index])
        smooth_layer(LayerWork(layer, batches, [], None, None, f"{prefix}.{index}", family), alpha)
        nxt = Activations()
        for h, kw in batches:
            out = layer(h, **kw)
            nxt.append(out[0] if isinstance(out, tuple) else out)
        hidden = nxt
