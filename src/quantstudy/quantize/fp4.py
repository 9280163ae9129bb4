"""Choosing MX / NVFP4 scales: abs-max (RTN), MSE-optimal clipping on the format's grid,
shared global scales for fused linears, calibrated input global scales.

The formats' arithmetic is `numerics_fp`; here is what the quantize stage decides. The
format fixes how a scale follows from a group's abs-max (E8M0 power of two, or FP8 under
the NVFP4 global scale), so the only freedom is the abs-max each group is given: shrinking
it (clipping) is the MSE search's knob, as for integers. NVFP4's global scale is always
taken from the *unclipped* tensor first and then held fixed, as llm-compressor's observers
do: it sets the FP8 scales' range, and every candidate clip must be judged under the same one.
"""

from __future__ import annotations

import torch

from quantstudy import numerics_fp as fp
from quantstudy.numerics import QuantizedWeight, expand_to_weight, quantize
from quantstudy.schemes import WeightQuant

CHUNK_ELEMENTS = 1 << 17   # weights per chunk of the MSE search (512 KiB of float32)

# Linears vLLM fuses into one (Llama-style `packed_modules_mapping`): NVFP4 members must
# share a global scale, since vLLM keeps one per fused layer (it takes their maximum and warns).
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def group_absmax(w: torch.Tensor, args: WeightQuant) -> torch.Tensor:
    """Per-group abs-max [out, in / group] in float32, as the library reduces min and max."""
    g = w.float().reshape(w.shape[0], -1, args.group_size)
    return torch.maximum(g.amin(dim=2).clamp(max=0).abs(), g.amax(dim=2).clamp(min=0))


def global_scale_of(*weights: torch.Tensor) -> torch.Tensor:
    """NVFP4 global scale shared by `weights` (one tensor, or the members of a fused linear)."""
    return fp.nv_global_scale(max(w.detach().float().abs().max() for w in weights))


def fp_qparams(w: torch.Tensor, args: WeightQuant, clip: torch.Tensor | float = 1.0,
               global_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(stored group scales, global scale or None) with each group's abs-max times `clip`
    (scalar or per group). NVFP4's global scale: given, or the unclipped tensor's."""
    if fp.is_nv(args) and global_scale is None:
        global_scale = global_scale_of(w)
    if not fp.is_nv(args):
        global_scale = None
    return fp.group_scales(group_absmax(w, args) * clip, args, global_scale), global_scale


def fp_rtn(w: torch.Tensor, args: WeightQuant, global_scale: torch.Tensor | None = None,
           clip: torch.Tensor | float = 1.0) -> QuantizedWeight:
    """Round-to-nearest with the format's abs-max scales (shrunk by `clip`)."""
    scale, g = fp_qparams(w, args, clip, global_scale)
    return QuantizedWeight(quantize(w, scale, None, args, global_scale=g), scale, None, args, global_scale=g)


def fp_mse_clip_qparams(w: torch.Tensor, args: WeightQuant, global_scale: torch.Tensor | None = None,
                        grid: int = 100, max_shrink: float = 0.8, norm: float = 2.4,
                        coarse_step: int = 5) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MSE-optimal clipping on the format's grid: per group, the shrink p = 1 - i/grid
    (i < max_shrink * grid) of its abs-max minimising sum |w - Q_p(w)|^norm, searched
    coarse-to-fine as the integer search (`primitives.mse_clip_qparams`); p = 1 (abs-max)
    is a candidate, so the result is never worse than RTN on that objective. Candidates
    whose scales round to the same FP8 / power-of-two value tie, and the first is kept."""
    if fp.is_nv(args) and global_scale is None:
        global_scale = global_scale_of(w)
    g = global_scale if fp.is_nv(args) else None
    wg = w.float().reshape(-1, args.group_size)
    rows = max(1, CHUNK_ELEMENTS // args.group_size)
    steps = int(max_shrink * grid)
    scales = [_search(wg[r:r + rows], args, g, grid, steps, norm, coarse_step) for r in range(0, wg.shape[0], rows)]
    return torch.cat(scales).reshape(w.shape[0], -1), g


def _search(wg: torch.Tensor, args: WeightQuant, g, grid: int, steps: int, norm: float, coarse_step: int):
    absmax = torch.maximum(wg.amin(dim=1).clamp(max=0).abs(), wg.amax(dim=1).clamp(min=0))

    def error(rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        step = fp.value_scale(scale, args, g)[:, None]
        return (fp.qdq(rows, step, args.num_bits) - rows).abs().pow(norm).sum(dim=1)

    best_scale = fp.group_scales(absmax, args, g)
    best_err = error(wg, best_scale)
    best_i = torch.zeros_like(absmax, dtype=torch.long)
    last = best_scale.view(torch.uint8).clone()   # per group, the scale evaluated last

    def consider(i: torch.Tensor) -> None:
        # Neighbouring candidates mostly round to the same stored scale (an MX scale is a power
        # of two: 2-3 distinct values over the whole range; NVFP4's FP8 has 8 per binade), and
        # an already-evaluated scale has an already-considered error: only groups whose scale
        # changed are quantized (the result is the exhaustive search's, bit for bit).
        nonlocal best_err, best_scale, best_i, last
        scale = fp.group_scales(absmax * (1 - i.float() / grid), args, g)
        bits = scale.view(torch.uint8)
        idx = (bits != last).nonzero().squeeze(1)
        last = bits
        if idx.numel() == 0:
            return
        err = error(wg[idx], scale[idx])
        better = err < best_err[idx]
        won = idx[better]
        best_err[won] = err[better]
        best_scale.view(torch.uint8)[won] = bits[won]
        best_i[won] = i[won]

    for i in range(coarse_step, steps, coarse_step):
        consider(torch.full_like(best_i, i))
    center = best_i.clone()
    for offset in range(-(coarse_step - 1), coarse_step):
        if offset:
            consider((center + offset).clamp(0, steps - 1))
    return best_scale


def fp_value_scale_full(scale: torch.Tensor, args: WeightQuant, shape: torch.Size,
                        global_scale: torch.Tensor | None) -> torch.Tensor:
    """Value scales broadcast to the weight's shape (GPTQ's per-column step)."""
    return expand_to_weight(fp.value_scale(scale, args, global_scale), shape, args)


def fused_groups(names: list[str]) -> list[list[str]]:
    """`names` partitioned into the sets vLLM fuses (same parent, q/k/v or gate/up), others alone."""
    out, seen = [], set()
    for name in names:
        if name in seen:
            continue
        parent, _, leaf = name.rpartition(".")
        members = [name]
        for fused in FUSED:
            if leaf in fused:
                members = [n for n in names if n.rpartition(".")[0] == parent and n.rpartition(".")[2] in fused]
        seen.update(members)
        out.append(members)
    return out


def shared_global_scales(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One NVFP4 global scale per fused set of `weights` (name -> float weight)."""
    out = {}
    for members in fused_groups(list(weights)):
        g = global_scale_of(*(weights[n] for n in members))
        out.update({n: g for n in members})
    return out


@torch.no_grad()
def calibrate_input_global_scales(model: torch.nn.Module, calib_ids: torch.Tensor, names: list[str],
                                  batch_size: int = 4) -> dict[str, torch.Tensor]:
    """NVFP4 W4A4's static input global scales: each linear's input abs-max over the
    calibration tokens (the library's `static_minmax`), then `generate_gparam`. Linears
    reading the same input get the same scale by construction."""
    absmax: dict[str, torch.Tensor] = {}

    def hook(module, args, name):
        m = args[0].detach().abs().amax().float()
        absmax[name] = torch.maximum(absmax[name], m) if name in absmax else m

    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in names]
    try:
        for i in range(0, calib_ids.shape[0], batch_size):
            model(calib_ids[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
    return {n: fp.input_global_scale(absmax[n]) for n in names}


class InputAbsMax:
    """While active: each named linear's input abs-max over the forwards that run (NVFP4
    W4A4's static input global scale, per linear, from the quantized layer's own forward as
    the walk runs it). A forward (post) hook, so it sees the input the linear computed with,
    after any pre-hook changed it (the one-pass walk divides by the smoothing scales there)."""

    def __init__(self, module: torch.nn.Module, names: list[str]):
        self.module, self.names, self.absmax, self.handles = module, names, {}, []

    def _record(self, name: str, x: torch.Tensor) -> None:
        m = x.detach().abs().amax().float()
        self.absmax[name] = torch.maximum(self.absmax[name], m) if name in self.absmax else m

    def __enter__(self) -> "InputAbsMax":
        self.handles = [self.module.get_submodule(n).register_forward_hook(
            lambda _m, args, _out, n=n: self._record(n, args[0])) for n in self.names]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def global_scales(self) -> dict[str, torch.Tensor]:
        missing = [n for n in self.names if n not in self.absmax]
        if missing:
            raise ValueError(f"no input reached {', '.join(missing)} during calibration")
        return {n: fp.input_global_scale(self.absmax[n]).cpu() for n in self.names}
