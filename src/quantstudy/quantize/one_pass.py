"""One forward per decoder layer: each group of linears is quantized the moment every
calibration batch has brought it its input, and the forward goes on with the quantized weights.

The two-forward walk (llm-compressor's sequential pipeline) runs a layer once with hooks to
gather every linear's Hessian, quantizes, and runs it again to give the next layer its
inputs. Here every calibration batch runs through the layer once, and all of them stop at
the same points: the first linear of each input group (q/k/v share one input, gate/up
another). When every batch has stopped at q_proj, the group's X^T X is complete; it is
smoothed (SmoothQuant: scales from the input's abs-max over all batches, folded into the norm
and the weights, the Hessian transformed to match), quantized, the dequantized weights put
in place, and the batches go on *with them*. o_proj's Hessian then comes from attention over
quantized q/k/v, the MLP's from the quantized attention ("true sequential", GPTQ paper
section 4), and the layer's outputs are already the quantized layer's: the second forward
is gone, half the GEMMs of calibration.

The batches are threads that run strictly one at a time (a baton passed in batch order), so
the statistics are summed in a fixed order and the results do not depend on scheduling; only
the tensors alive at a stop point are held for every batch at once (the residual stream and
the group's input), each batch's temporaries come and go during its own turn. Which linears
share an input is learnt per layer from a probe forward on one sample.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from quantstudy.errors import QuantstudyError
from quantstudy.numerics import QuantizedWeight
from quantstudy.quantize.gptq import bf16_gram_is_exact, gram, gram_of_bf16
from quantstudy.quantize.layerwise import LayerWork, fold_mapping, forward_precision
from quantstudy.quantize.smoothquant import smoothing_scales

DEFAULT_BUDGET = 4 << 30   # bytes held at a stop point across all batches, when --max-memory is not given


def live_bytes(tokens: int, hidden: int, widest: int, element_size: int) -> int:
    """What every batch holds at once at the widest stop point (down_proj's): the residual
    stream, the layer's input and the group's input."""
    return tokens * (2 * hidden + widest) * element_size


def _first_sample(value, size: int):
    if isinstance(value, (tuple, list)):
        return type(value)(_first_sample(v, size) for v in value)
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size and size > 1:
        return value[:1]
    return value


@torch.no_grad()
def input_groups(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, linears: Sequence[str],
                 gemm_dtype: torch.dtype | None) -> list[list[str]]:
    """The targeted linears grouped by the input tensor they read, in the order they run,
    from a forward of the layer on the first sample of one batch."""
    groups: list[list[str]] = []
    seen: list[torch.Tensor] = []   # held so a freed input's address is never taken for a new one
    handles = []
    for name in linears:
        def hook(_m, args, _name=name):
            x = args[0]
            for i, other in enumerate(seen):
                if other is x:
                    groups[i].append(_name)
                    return
            seen.append(x)
            groups.append([_name])
        handles.append(layer.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with forward_precision(gemm_dtype, hidden.device):
            layer(hidden[:1], **{k: _first_sample(v, hidden.shape[0]) for k, v in kwargs.items()})
    finally:
        for h in handles:
            h.remove()
    missing = set(linears) - {n for g in groups for n in g}
    if missing:
        raise QuantstudyError(f"{', '.join(sorted(missing))} never ran in a forward of the layer: "
                              "it cannot be calibrated")
    return groups


class _Aborted(Exception):
    pass


@dataclass
class _Group:
    names: list[str]
    xtx: torch.Tensor | None = None      # float64 sum of the batches' X^T X
    tokens: int = 0
    absmax: torch.Tensor | None = None   # per input channel, for SmoothQuant
    scales: torch.Tensor | None = None   # the smoothing applied (None: none)


@dataclass
class _Batch:
    """One calibration batch's thread: where it stopped and what it saw there."""
    index: int
    stopped_at: int | None = None        # group index of its current stop, None when finished
    output: torch.Tensor | None = None
    error: BaseException | None = None
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)   # group -> the input it read


class _Baton:
    """Exactly one party runs at a time: the walker ('main') or one batch (its index)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.holder: int | str = "main"
        self.aborted = False

    def pass_to(self, holder: int | str) -> None:
        with self.cond:
            self.holder = holder
            self.cond.notify_all()

    def wait_for(self, holder: int | str) -> None:
        with self.cond:
            while self.holder != holder and not (self.aborted and holder != "main"):
                self.cond.wait()
        if self.aborted and holder != "main":
            raise _Aborted


def _smoothing_for(work: LayerWork, group: list[str]):
    """The family's norm mapping whose targets are this group's linears, if any."""
    if work.family is None:
        return None
    for m in work.family.norm_mappings:
        if set(m.targets) <= set(group):
            return m
    return None


@torch.no_grad()
def run_layer(work: LayerWork, batches: Sequence[tuple[torch.Tensor, dict]], groups: list[list[str]],
              solve: Callable[[LayerWork, list[str], torch.Tensor], dict[str, QuantizedWeight]],
              commit: Callable[[str, QuantizedWeight], None], smoothquant: float | None = None) -> list[torch.Tensor]:
    """The layer's one forward over every batch; returns each batch's (quantized) output.

    At each group's stop: smoothing (when `smoothquant` is a strength), `solve(work, names, H)`
    with H = 2/N X^T X over every calibration token, then `commit(name, qw)` for each member,
    which must leave the module computing with its quantized weight."""
    owner = {n: i for i, g in enumerate(groups) for n in g}
    state = [_Group(list(g)) for g in groups]
    runs = [_Batch(i) for i in range(len(batches))]
    baton, local = _Baton(), threading.local()
    device = batches[0][0].device
    bf16_gram = work.gemm_dtype == torch.bfloat16 and bf16_gram_is_exact(device)

    def hook(_module, args, name):
        run: _Batch = local.run
        x, gi = args[0], owner[name]
        if gi in run.inputs:                       # k/v after q: the same input, already smoothed
            if run.inputs[gi] is not x:
                raise QuantstudyError(f"{work.prefix}.{name} read a different input from the rest of its group "
                                      f"{groups[gi]} than on the probe: its dataflow depends on the batch")
        else:
            run.inputs = {gi: x}                   # the earlier groups' inputs may go
            with torch.autocast(device.type, enabled=False):
                g = state[gi]
                flat = x.reshape(-1, x.shape[-1])
                # under bf16 autocast the linears read bf16(x): its Gram, float32-accurate, from
                # two bf16 GEMMs; otherwise the float32 Gram of x
                product = gram_of_bf16(flat.to(torch.bfloat16)) if bf16_gram else gram(flat.float())
                g.xtx = product.double() if g.xtx is None else g.xtx.add_(product)
                g.tokens += flat.shape[0]
                if smoothquant is not None:
                    m = flat.float().abs().amax(dim=0)
                    g.absmax = m if g.absmax is None else torch.maximum(g.absmax, m)
            run.stopped_at = gi
            baton.pass_to("main")
            baton.wait_for(run.index)              # every batch has stopped here and the group is quantized
        s = state[gi].scales
        return args if s is None else (x / s.to(x.dtype), *args[1:])

    def body(run: _Batch, hidden: torch.Tensor, kwargs: dict) -> None:
        local.run = run
        try:
            baton.wait_for(run.index)
            with torch.no_grad(), forward_precision(work.gemm_dtype, device):
                out = work.layer(hidden, **kwargs)
            run.output = out[0] if isinstance(out, tuple) else out
        except _Aborted:
            pass
        except BaseException as exc:   # handed to the walker, which raises it
            run.error = exc
        run.stopped_at = None
        baton.pass_to("main")

    done: set[int] = set()   # groups quantized
    handles = [work.module(n).register_forward_pre_hook(lambda m, a, _n=n: hook(m, a, _n)) for n in owner]
    threads = [threading.Thread(target=body, args=(run, h, kw), daemon=True) for run, (h, kw) in zip(runs, batches)]
    try:
        for t in threads:
            t.start()
        for _ in range(len(groups) + 1):
            for run in runs:                       # each batch in turn, up to its next stop
                if run.error is None and (run.stopped_at is not None or run.output is None):
                    baton.pass_to(run.index)
                    baton.wait_for("main")
            failed = next((r.error for r in runs if r.error is not None), None)
            if failed is not None:
                raise failed
            stops = {r.stopped_at for r in runs}
            if stops == {None}:
                if len(done) != len(groups):   # the probed dataflow was not this layer's
                    missing = [n for i, g in enumerate(groups) if i not in done for n in g]
                    raise QuantstudyError(f"{work.prefix}: {', '.join(missing)} never ran in the layer's forward: "
                                          "it cannot be calibrated")
                break
            if len(stops) != 1:
                raise QuantstudyError(f"{work.prefix}: calibration batches took different paths through the layer "
                                      f"(stopped at {sorted(map(str, stops))}); use --no-true-sequential")
            gi = stops.pop()
            _quantize_group(work, state[gi], solve, commit, smoothquant)
            done.add(gi)
        else:
            raise QuantstudyError(f"{work.prefix}: a linear ran twice in one forward; use --no-true-sequential")
    finally:
        with baton.cond:
            baton.aborted = True
            baton.cond.notify_all()
        for t in threads:
            t.join()
        for h in handles:
            h.remove()
    return [r.output for r in runs]


def _quantize_group(work: LayerWork, g: _Group, solve, commit, smoothquant: float | None) -> None:
    hessian, g.xtx = g.xtx.mul_(2.0 / g.tokens), None   # H = 2/N X^T X, its only reference from here
    mapping = _smoothing_for(work, g.names) if smoothquant is not None else None
    if mapping is not None:
        targets = list(mapping.targets)
        s = smoothing_scales(g.absmax, [work.module(t).weight.data for t in targets], smoothquant)
        fold_mapping(work.layer, mapping, targets, s, work.family)
        s64 = s.double()
        hessian.div_(s64[:, None] * s64[None, :])   # the inputs the batches read from now on: x / s
        g.scales = s
    g.absmax = None
    solved = solve(work, g.names, hessian)
    del hessian   # before the commits, whose reports are the stop's peak of memory (down_proj's: 18 MiB)
    for name, qw in solved.items():
        commit(name, qw)
