"""GPTQ (Frantar et al., 2022) as a pure function over (weight, Hessian, scheme).

Quantizes one column at a time and spreads each column's rounding error over the
columns not yet quantized, weighted by the inverse Hessian of the layer's inputs, so the
layer output error ||XW^T - XQ^T|| is minimised rather than the weight error.

Choices, as in the paper's recipe (and llm-compressor's gptq_quantize.py):
- scales and zero points are fixed *before* the error updates ("static groups"), from
  the original weight, with abs-max or MSE-optimal clipping. With act-order the
  columns are then visited in order of decreasing Hessian diagonal, but every column
  keeps the scale of its own group in the original order — the stored format is the
  plain group format (no g_idx), which every engine kernel reads at full speed
  (compressed-tensors' `actorder: weight`, a.k.a. "static" act-order);
- dampening: a fraction of the mean Hessian diagonal added to the diagonal;
- columns whose Hessian diagonal is zero (inputs always zero: dead channels) are
  masked; if the Cholesky factorisation still fails, dampening is raised tenfold up
  to 3 times before a clear error.
"""

from __future__ import annotations

import torch

from quantstudy.errors import QuantstudyError
from quantstudy.numerics import QuantizedWeight, expand_to_weight, int_range, qdq_elementwise, quantize
from quantstudy.numerics_fp import is_microscaled
from quantstudy.quantize.primitives import compute_qparams, mse_clip_qparams, reduce_min_max
from quantstudy.schemes import NumberType, WeightQuant


def accumulate_hessian(
    h: torch.Tensor | None, n: int, x: torch.Tensor, xtx: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """Running H = 2/N sum x x^T over tokens; x is [..., in_features]. Returns (H, N).

    The batch product is a float32 GEMM (fast); the running mean is kept in float64 so
    thousands of batches do not drift. Pass `xtx` to reuse a product already computed
    for another linear reading the same input (q/k/v, gate/up)."""
    x = x.reshape(-1, x.shape[-1])
    t = x.shape[0]
    if xtx is None:
        xtx = batch_xtx(x)
    if h is None:
        h = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    h = h * (n / (n + t)) + (2.0 / (n + t)) * xtx
    return h, n + t


def batch_xtx(x: torch.Tensor) -> torch.Tensor:
    return gram(x.reshape(-1, x.shape[-1]).float()).double()


GRAM_BLOCK = 192   # columns per block product: 1.4x faster than one x^T x at width 1536 on a CPU


def gram(x: torch.Tensor) -> torch.Tensor:
    """x^T x for x [tokens, d], computing only the blocks on and above the diagonal and
    mirroring them: the product is symmetric, so a plain GEMM does a third more work than
    needed at d = 576 and almost half at d = 1536 (BLAS's syrk, which torch does not expose)."""
    d = x.shape[1]
    if x.device.type != "cpu" or d <= 2 * GRAM_BLOCK:
        return x.T @ x
    out = torch.empty(d, d, dtype=x.dtype, device=x.device)
    for i in range(0, d, GRAM_BLOCK):
        block = x[:, i:i + GRAM_BLOCK].T @ x[:, i:]
        out[i:i + GRAM_BLOCK, i:] = block
        out[i:, i:i + GRAM_BLOCK] = block.T
    return out


def gram_of_bf16(xb: torch.Tensor) -> torch.Tensor:
    """x^T x in float32 for bf16 x [tokens, d] -- the inputs a linear reads under bf16 autocast --
    from two bf16 GEMMs (AMX / AVX512-BF16: 3-8x a float32 GEMM on a CPU). Each GEMM sums in
    float32 and rounds only its result to bf16: the first gives P = bf16(x^T x) (8 bits), the
    second R = bf16(x^T x - P) with P subtracted inside the float32 sums (addmm's beta), so
    P + R carries 16 bits -- within a few float32 ulps of x^T x (measured: 1.9e-6 of the
    largest entry, float32's own product 5e-7, one bf16 GEMM 1e-3)."""
    xt = xb.T
    p = xt @ xb
    r = torch.addmm(p, xt, xb, beta=-1.0)
    return p.float().add_(r)


_BF16_GRAM_EXACT: dict[str, bool] = {}


def bf16_gram_is_exact(device: torch.device) -> bool:
    """Whether this device's bf16 GEMM subtracts addmm's input inside its float32 sums (the
    two-pass Gram's premise): checked once per device type on a small product against float64,
    so a backend that rounds x^T x to bf16 first falls back to the float32 Gram, never to 1e-3."""
    key = device.type
    if key not in _BF16_GRAM_EXACT:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(512, 96, generator=g).mul_(torch.rand(96, generator=g) * 4).to(device, torch.bfloat16)
        ref = x.double().T @ x.double()
        err = ((gram_of_bf16(x).double() - ref).abs().max() / ref.abs().max()).item()
        _BF16_GRAM_EXACT[key] = err < 2e-5
    return _BF16_GRAM_EXACT[key]


def _inverse_hessian_cholesky(h: torch.Tensor, dampening: float, layer: str) -> torch.Tensor:
    mean_diag = torch.mean(torch.diag(h)).item()
    damp = dampening
    for _ in range(4):
        try:
            # float32 factorisations, as GPTQ's reference code: 3x faster than float64 and
            # the dampening keeps them well conditioned; the accumulation stays float64
            # h + damp * mean * I rounded to float32, the same values as building it in float64
            # with an identity (x + 0 = x off the diagonal) without two float64 n x n temporaries
            hd = h.float()
            hd.diagonal().copy_(torch.diagonal(h) + damp * mean_diag)
            # GPTQ needs U, upper triangular with U^T U = H^-1. GPTQ's reference code factors H,
            # inverts and factors again (4n^3/3 flops in three LAPACK calls). With J the
            # order-reversing permutation, J H J = L L^T gives H = R R^T for R = J L J upper,
            # so H^-1 = R^-T R^-1 and U = R^-1 = J L^-1 J: one factorisation and one triangular
            # solve, the same U (positive diagonal: Cholesky factors are unique), 25-40% faster
            # at n = 576-1536 on a CPU and no further from float64's U (1.5e-7 vs 2.2e-7).
            lower, info = torch.linalg.cholesky_ex(hd.flip(0, 1))
            del hd
            if info.item() == 0:
                eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
                inverse_upper = torch.linalg.solve_triangular(lower, eye, upper=False).flip(0, 1)
                del lower, eye
                # one sum sees a non-finite entry anywhere (the diagonal, 1 / L[j,j], included)
                if torch.isfinite(inverse_upper.sum()):
                    return inverse_upper
        except torch.linalg.LinAlgError:
            pass
        damp *= 10
    raise QuantstudyError(
        f"GPTQ: the Hessian of {layer or 'a layer'} is not positive definite even with dampening {damp / 10:g}; "
        "use more or more varied calibration samples, or --algo rtn for this model"
    )


def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    args: WeightQuant,
    scale_dtype: torch.dtype,
    *,
    block_size: int = 128,
    dampening: float = 0.01,
    actorder: bool = True,
    mse_clip: bool = True,
    layer: str = "",
) -> QuantizedWeight:
    """Quantize weight [out, in] given the input Hessian [in, in]."""
    w = w.detach().float().clone()
    h = h.detach().double()   # copied below before any change: the caller's Hessian is left as it was
    cols = w.shape[1]
    if h.shape != (cols, cols):
        raise ValueError(f"Hessian {tuple(h.shape)} does not match weight {tuple(w.shape)}")

    global_scale = None
    if is_microscaled(args):
        # MX / NVFP4: the format's group scales (NVFP4's global scale fixed first, from the
        # whole -- possibly row-stacked fused -- weight), then FP4/FP8 rounding in the sweep
        from quantstudy.quantize import fp4

        scale, global_scale = (fp4.fp_mse_clip_qparams if mse_clip else fp4.fp_qparams)(w, args)
        zero_point = None
        s_full = fp4.fp_value_scale_full(scale, args, w.shape, global_scale).clone()
    elif mse_clip:
        scale, zero_point = mse_clip_qparams(w, args, scale_dtype)
    else:
        scale, zero_point = compute_qparams(*reduce_min_max(w, args), args, scale_dtype)
    if not is_microscaled(args):
        s_full = expand_to_weight(scale.float(), w.shape, args).clone()
    z_full = None if zero_point is None else expand_to_weight(zero_point.float(), w.shape, args).clone()

    diag = torch.diag(h)   # a copy
    dead = diag == 0
    diag[dead] = 1.0
    w[:, dead] = 0.0

    perm = None
    if actorder:
        perm = torch.argsort(diag, descending=True)
        # one gather into a new matrix (h[perm][:, perm] made two n x n float64 copies)
        h = h[perm[:, None], perm[None, :]]
        w = w[:, perm]
        s_full = s_full[:, perm]
        z_full = None if z_full is None else z_full[:, perm]
    elif dead.any():
        h = h.clone()
    if dead.any():
        h.diagonal()[dead if perm is None else dead[perm]] = 1.0

    hinv = _inverse_hessian_cholesky(h, dampening, layer).float()
    del h   # our copy (the caller's is untouched): not needed in the sweep
    # The sweep runs on the transposes (one input column of W is one contiguous row of W^T):
    # each step's rank-1 update then writes rows, not a strided column slice -- the same
    # element-wise arithmetic, several times faster on a CPU.
    wt = w.T.contiguous()
    st = s_full.T.contiguous()
    zt = None if z_full is None else z_full.T.contiguous()
    qt = torch.zeros_like(wt)
    # integer grids skip qdq_elementwise's temporaries and copies: a third fewer tensor ops per
    # column in this Python loop, bit-identical values
    int_grid = args.type is NumberType.INT and not is_microscaled(args)
    lo, hi = int_range(args.num_bits) if int_grid else (None, None)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = wt[i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        diag = torch.diag(hinv1).tolist()
        for i in range(i2 - i1):
            col, s_row, z_row = w1[i], st[i1 + i], None if zt is None else zt[i1 + i]
            if int_grid:   # qdq_elementwise's integer arithmetic, in place in the row of qt it fills
                q = torch.div(col, s_row, out=qt[i1 + i]).round_()
                q = (q.clamp_(lo, hi) if z_row is None else q.add_(z_row).clamp_(lo, hi).sub_(z_row)).mul_(s_row)
            else:
                q = qdq_elementwise(col, s_row, z_row, args)
                qt[i1 + i] = q
            err = torch.sub(col, q, out=err1[i]).div_(diag[i])
            w1[i:].addr_(hinv1[i, i:], err, alpha=-1.0)
        wt[i2:] -= hinv[i1:i2, i2:].T @ err1
    q_out = qt.T

    if perm is not None:
        q_out = q_out[:, torch.argsort(perm)]
    # q_out lies on the grid: re-quantizing with the same parameters recovers the values
    return QuantizedWeight(quantize(q_out, scale, zero_point, args, global_scale=global_scale), scale, zero_point,
                           args, global_scale=global_scale)
