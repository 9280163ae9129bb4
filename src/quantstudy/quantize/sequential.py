"""Sequential layer-wise calibration, as llm-compressor's sequential pipeline.

The decoder runs one layer at a time on cached inputs: capture what enters layer 0,
then for each layer (1) collect the statistics an algorithm needs with hooks on that
layer only, (2) smooth / quantize its linears, (3) run the *quantized* layer to get the
next layer's inputs, so later layers calibrate on the errors earlier ones make. Peak
memory is one layer plus the calibration activations, never the whole model's
activations — the property that lets a 70B model quantize on one GPU.

The maths lives in gptq.py, awq.py, smoothquant.py (tensors in, tensors out); this
module only walks modules, hooks and copies weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from quantstudy.errors import QuantstudyError
from quantstudy.quantize.awq import awq_clip_ratios, awq_quantize, awq_search_scales, input_statistics
from quantstudy.quantize.gptq import accumulate_hessian, batch_xtx, gptq_quantize
from quantstudy.quantize.model import LayerReport, is_ignored
from quantstudy.quantize.primitives import QuantizedWeight
from quantstudy.quantize.rtn import rtn_quantize
from quantstudy.quantize.smoothquant import fold_smoothing, smoothing_scales
from quantstudy.schemes import Scheme, Strategy

# (preceding op, linears reading its output) inside a Llama-style decoder layer
SMOOTH_MAPPINGS = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
)
AWQ_EXTRA_MAPPINGS = (("mlp.up_proj", ("mlp.down_proj",)), ("self_attn.v_proj", ("self_attn.o_proj",)))


@dataclass(frozen=True)
class Recipe:
    """How quantized values are chosen: algorithm and its knobs (saved with the checkpoint)."""

    algorithm: str = "rtn"  # rtn | gptq | awq
    smoothquant: float | None = None  # SmoothQuant strength, e.g. 0.8; None = off
    dampening: float = 0.01
    actorder: bool = True
    mse_clip: bool = True
    block_size: int = 128

    def __post_init__(self) -> None:
        if self.algorithm not in ("rtn", "gptq", "awq"):
            raise QuantstudyError(f"unknown algorithm '{self.algorithm}'; choose one of: rtn, gptq, awq")
        if self.smoothquant is not None and not 0.0 <= self.smoothquant <= 1.0:
            raise QuantstudyError(f"--smoothquant strength must be in [0, 1], got {self.smoothquant}")
        if not 0.0 < self.dampening < 1.0:
            raise QuantstudyError(f"GPTQ dampening must be in (0, 1), got {self.dampening}")

    def check(self, scheme: Scheme) -> None:
        if self.algorithm == "awq" and scheme.weights.strategy is Strategy.BLOCK:
            raise QuantstudyError(f"AWQ does not apply to block-wise scales ({scheme.name}); use --algo gptq or rtn")

    @property
    def needs_calibration(self) -> bool:
        return self.algorithm != "rtn" or self.smoothquant is not None


class _Stop(Exception):
    pass


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise QuantstudyError("could not find the decoder layers of this model for sequential calibration")


def _capture_layer0_inputs(model, layers, calib_ids: torch.Tensor, batch_size: int):
    captured: list[tuple[torch.Tensor, dict]] = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "use_cache", "hidden_states")}
        captured.append((hidden.detach(), kwargs))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, calib_ids.shape[0], batch_size):
            try:
                model(calib_ids[start:start + batch_size], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _run_layer(layer, batches) -> list[tuple[torch.Tensor, dict]]:
    out = []
    for hidden, kwargs in batches:
        result = layer(hidden, **kwargs)
        out.append((result[0] if isinstance(result, tuple) else result, kwargs))
    return out


def _collect(layer, batches, names: list[str], fn: Callable[[str, torch.Tensor], None], outputs: bool = False):
    """Run the layer with hooks calling fn(name, input-or-output activations)."""
    handles = []
    for name in names:
        def hook(_m, inp, out, _name=name):
            fn(_name, (out if outputs else inp[0]).detach())
        handles.append(layer.get_submodule(name).register_forward_hook(hook))
    try:
        _run_layer(layer, batches)
    finally:
        for h in handles:
            h.remove()


def _smooth_layer(layer, batches, alpha: float) -> None:
    norms = [(norm, targets) for norm, targets in SMOOTH_MAPPINGS
             if _has(layer, norm) and all(_has(layer, t) for t in targets)]
    absmax: dict[str, torch.Tensor] = {}

    def record(name, x):
        m = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
        absmax[name] = m if name not in absmax else torch.maximum(absmax[name], m)

    _collect(layer, batches, [n for n, _ in norms], record, outputs=True)
    for norm, targets in norms:
        weights = [layer.get_submodule(t).weight.data for t in targets]
        scales = smoothing_scales(absmax[norm], weights, alpha)
        fold_smoothing(layer.get_submodule(norm).weight.data, weights, scales)


def _has(module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def _awq_layer(layer, batches, local: list[str], scheme: Scheme, scale_dtype) -> dict[str, QuantizedWeight]:
    stats: dict[str, list] = {}

    def record(name, x):
        abs_sum, gram, n = input_statistics(x)
        if name in stats:
            stats[name][0] += abs_sum
            stats[name][1] += gram
            stats[name][2] += n
        else:
            stats[name] = [abs_sum, gram, n]

    _collect(layer, batches, local, record)
    abs_mean = {n: v[0] / v[2] for n, v in stats.items()}
    grams = {n: v[1] for n, v in stats.items()}
    args = scheme.weights
    with torch.no_grad():
        for prev, targets in SMOOTH_MAPPINGS + AWQ_EXTRA_MAPPINGS:
            targets = [t for t in targets if t in grams]
            if not targets or not _has(layer, prev):
                continue
            prev_w = layer.get_submodule(prev).weight
            if prev_w.shape[0] != layer.get_submodule(targets[0]).weight.shape[1]:
                continue  # e.g. v_proj -> o_proj under grouped-query attention: cannot fold
            weights = [layer.get_submodule(t).weight for t in targets]
            s = awq_search_scales(abs_mean[targets[0]], grams[targets[0]], [w.data for w in weights], args,
                                  scale_dtype)
            prev_w.data.div_(s if prev_w.dim() == 1 else s.unsqueeze(1))
            for t, w in zip(targets, weights):
                w.data.mul_(s.unsqueeze(0))
                grams[t] = grams[t] / torch.outer(s, s)  # the inputs are now x / s
        out = {}
        for n in local:
            w = layer.get_submodule(n).weight.data
            clip = awq_clip_ratios(grams[n], w, args, scale_dtype) if args.strategy is Strategy.GROUP else None
            out[n] = awq_quantize(w, args, scale_dtype, clip)
    return out


def _gptq_layer(layer, batches, local, scheme: Scheme, recipe: Recipe, scale_dtype, prefix: str):
    """GPTQ every linear of a layer. Linears fed the same input (q/k/v, gate/up) share
    one Hessian, and since GPTQ treats output rows independently they are quantized as
    one row-stacked matrix: one Cholesky and one column sweep instead of three (as
    llm-compressor's batched quantization). Tensor-wise scales would couple the stacked
    rows, so those schemes run per linear."""
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

    _collect(layer, batches, local, record)
    out: dict[str, QuantizedWeight] = {}
    for owner, names in members.items():
        weights = [layer.get_submodule(n).weight.data for n in names]
        stacked = gptq_quantize(torch.cat(weights), hessians[owner][0], scheme.weights, scale_dtype,
                                block_size=recipe.block_size, dampening=recipe.dampening, actorder=recipe.actorder,
                                mse_clip=recipe.mse_clip, layer=f"{prefix}.{owner}")
        out.update(zip(names, stacked.split_rows([w.shape[0] for w in weights])))
    return out


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
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    batches = _capture_layer0_inputs(model, layers, calib_ids, batch_size)
    qweights: dict[str, QuantizedWeight] = {}
    reports: list[LayerReport] = []
    for index, layer in enumerate(layers):
        layer_prefix = f"{prefix}.{index}"
        local = [n for n, m in layer.named_modules()
                 if isinstance(m, nn.Linear) and not is_ignored(f"{layer_prefix}.{n}", scheme.ignore)]
        if recipe.smoothquant is not None:
            _smooth_layer(layer, batches, recipe.smoothquant)
        if recipe.algorithm == "gptq":
            layer_q = _gptq_layer(layer, batches, local, scheme, recipe, scale_dtype, layer_prefix)
        elif recipe.algorithm == "awq":
            layer_q = _awq_layer(layer, batches, local, scheme, scale_dtype)
        else:
            layer_q = {n: rtn_quantize(layer.get_submodule(n).weight.data, scheme.weights, scale_dtype) for n in local}
        for n, qw in layer_q.items():
            _commit(layer.get_submodule(n), f"{layer_prefix}.{n}", qw, qweights, reports)
        batches = _run_layer(layer, batches)  # quantized outputs feed the next layer
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
    layers = decoder_layers(model)
    batches = _capture_layer0_inputs(model, layers, calib_ids, batch_size)
    for layer in layers:
        _smooth_layer(layer, batches, alpha)
        batches = _run_layer(layer, batches)
