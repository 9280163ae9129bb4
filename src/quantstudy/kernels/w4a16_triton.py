"""Our INT4 weight-only GEMM (W4A16) and per-token activation quantizer, in Triton.

Weight layout, chosen so the kernel needs no shuffles: for a (N, K) weight quantized
symmetrically in groups of G along K, `packed` is (K/2, N) uint8 and, inside group g,
row g*G/2 + i holds W[:, gG + i] + 8 in its low nibble and W[:, gG + G/2 + i] + 8 in
its high nibble. One loop step of the kernel loads one group: the two halves of the
activation tile are two contiguous loads, the two nibble planes two MMAs, and the
group's scale is applied once to the fp32 partial product (exact integer weights in the
MMA, scales in fp32: no bf16 rounding of dequantized weights).

Small token counts are memory-bound and leave most SMs idle with one tile per output
block, so the small-M launcher splits K across programs and adds partial sums
atomically in fp32 (then casts); large M uses plain tiles and writes bf16.

Triton is imported only when a kernel is called; `TRITON_INTERPRET=1` runs the same
kernels on a CPU (slowly), which is how CI checks them.
"""

from __future__ import annotations

import functools
import inspect
import os

import torch


def pack_int4_groups(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, K) int8 in [-8, 7] -> (K/2, N) uint8 in the kernel's layout (see module doc)."""
    n, k = q.shape
    if k % group_size or group_size % 2:
        raise ValueError(f"K={k} is not a multiple of the group size {group_size}")
    half = group_size // 2
    u = (q.to(torch.int16) + 8).to(torch.uint8).t().reshape(k // group_size, 2, half, n)
    return (u[:, 0] | (u[:, 1] << 4)).reshape(k // 2, n).contiguous()


def unpack_int4_groups(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of `pack_int4_groups`: (K/2, N) uint8 -> (N, K) int8."""
    k2, n = packed.shape
    half = group_size // 2
    p = packed.reshape(k2 // half, 1, half, n)
    both = torch.cat([p & 0xF, p >> 4], dim=1).to(torch.int16) - 8
    return both.reshape(2 * k2, n).t().to(torch.int8).contiguous()


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def w4a16_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K,
                     stride_xm, stride_wk, stride_sg, stride_ym,
                     GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     SPLIT_K: tl.constexpr):
        pid, pid_k = tl.program_id(0), tl.program_id(1)
        num_n = tl.cdiv(N, BLOCK_N)
        pid_m, pid_n = pid // num_n, pid % num_n
        HALF: tl.constexpr = GROUP // 2
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, HALF)
        m_ok, n_ok = rm < M, rn < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for g in range(pid_k, K // GROUP, SPLIT_K):
            x_row = x_ptr + rm[:, None] * stride_xm + g * GROUP + rk[None, :]
            x_lo = tl.load(x_row, mask=m_ok[:, None], other=0.0)
            x_hi = tl.load(x_row + HALF, mask=m_ok[:, None], other=0.0)
            packed = tl.load(w_ptr + (g * HALF + rk)[:, None] * stride_wk + rn[None, :],
                             mask=n_ok[None, :], other=0)
            lo = ((packed & 0xF).to(tl.int8) - 8).to(x_lo.dtype)
            hi = ((packed >> 4).to(tl.int8) - 8).to(x_lo.dtype)
            part = tl.dot(x_lo, lo) + tl.dot(x_hi, hi)
            scale = tl.load(s_ptr + g * stride_sg + rn, mask=n_ok, other=0.0).to(tl.float32)
            acc += part * scale[None, :]
        y = y_ptr + rm[:, None] * stride_ym + rn[None, :]
        mask = m_ok[:, None] & n_ok[None, :]
        if SPLIT_K == 1:
            tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask)
        else:
            tl.atomic_add(y, acc, mask=mask)

    @triton.jit
    def w4a16_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_wk, stride_sg,
                          GROUP: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr):
        # One token: no MMA (it would waste 15/16 of a 16-row tile and a shared-memory
        # round trip per step); FMAs into a 2-D accumulator, reduced once at the end.
        pid_n, pid_k = tl.program_id(0), tl.program_id(1)
        HALF: tl.constexpr = GROUP // 2
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, HALF)
        n_ok = rn < N
        acc = tl.zeros((HALF, BLOCK_N), dtype=tl.float32)
        for g in range(pid_k, K // GROUP, SPLIT_K):
            x_lo = tl.load(x_ptr + g * GROUP + rk).to(tl.float32)
            x_hi = tl.load(x_ptr + g * GROUP + HALF + rk).to(tl.float32)
            packed = tl.load(w_ptr + (g * HALF + rk)[:, None] * stride_wk + rn[None, :],
                             mask=n_ok[None, :], other=0)
            lo = ((packed & 0xF).to(tl.int8) - 8).to(tl.float32)
            hi = ((packed >> 4).to(tl.int8) - 8).to(tl.float32)
            scale = tl.load(s_ptr + g * stride_sg + rn, mask=n_ok, other=0.0).to(tl.float32)
            acc += (x_lo[:, None] * lo + x_hi[:, None] * hi) * scale[None, :]
        tl.atomic_add(y_ptr + rn, tl.sum(acc, axis=0), mask=n_ok)

    def configs(small: bool):
        out = []
        if small:
            for bn in (32, 64, 128):
                for split in (1, 2, 4, 8):
                    out.append(triton.Config({"BLOCK_M": 16, "BLOCK_N": bn, "SPLIT_K": split},
                                             num_warps=4, num_stages=4))
        else:
            for bm, bn, warps in ((64, 64, 4), (64, 128, 4), (128, 128, 8), (128, 256, 8), (64, 256, 8)):
                for stages in (3, 4):
                    out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "SPLIT_K": 1},
                                             num_warps=warps, num_stages=stages))
        return out

    def tuned(small: bool):
        if os.environ.get("TRITON_INTERPRET") == "1":
            # The interpreter has no device to benchmark configs on: one fixed config per
            # launcher, split-K on the small one so its atomic path is exercised too.
            fixed = {"BLOCK_M": 16, "BLOCK_N": 32, "SPLIT_K": 2} if small else {
                "BLOCK_M": 32, "BLOCK_N": 32, "SPLIT_K": 1}
            return _Fixed(w4a16_kernel, fixed)
        kwargs = {"reset_to_zero": ["y_ptr"]} if small else {}
        if "do_bench" in inspect.signature(triton.autotune).parameters:
            # Triton's default spends 125 ms per config and shape; 30 ms ranks them as well.
            from triton.testing import do_bench
            kwargs["do_bench"] = functools.partial(do_bench, warmup=5, rep=25)
        return triton.autotune(configs=configs(small), key=["M", "N", "K"], **kwargs)(w4a16_kernel)

    @triton.jit
    def per_token_quant_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm,
                               QMAX: tl.constexpr, IS_FP8: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_xm + cols, mask=cols < K, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / QMAX
        v = tl.minimum(tl.maximum(x / scale, -QMAX), QMAX)
        if IS_FP8:
            q = v.to(q_ptr.dtype.element_ty)
        else:
            # round half away from zero (torch.round is half-to-even; ties are measure-zero)
            q = tl.where(v >= 0, tl.floor(v + 0.5), tl.ceil(v - 0.5)).to(tl.int8)
        tl.store(q_ptr + row * stride_qm + cols, q, mask=cols < K)
        tl.store(s_ptr + row, scale)

    if os.environ.get("TRITON_INTERPRET") == "1":
        gemv = _Fixed(w4a16_gemv_kernel, {"BLOCK_N": 32, "SPLIT_K": 2})
    else:
        gemv_configs = [triton.Config({"BLOCK_N": bn, "SPLIT_K": split}, num_warps=warps, num_stages=3)
                        for bn in (64, 128, 256) for split in (1, 2, 4, 8) for warps in (4, 8)]
        gemv_kwargs = {"reset_to_zero": ["y_ptr"]}
        if "do_bench" in inspect.signature(triton.autotune).parameters:
            from triton.testing import do_bench
            gemv_kwargs["do_bench"] = functools.partial(do_bench, warmup=5, rep=25)
        gemv = triton.autotune(configs=gemv_configs, key=["N", "K"], **gemv_kwargs)(w4a16_gemv_kernel)
    return triton, {"small": tuned(True), "large": tuned(False), "gemv": gemv, "quant": per_token_quant_kernel}


class _Fixed:
    """`kernel[grid](...)` with a fixed set of meta-parameters (what autotune would pick)."""

    def __init__(self, kernel, meta: dict):
        self.kernel, self.meta = kernel, meta

    def __getitem__(self, grid):
        return functools.partial(self.kernel[grid], **self.meta)


SMALL_M = 64  # at or below: split-K launcher (memory-bound decode regime)


def w4a16_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """y = x @ dequant(W).T for x (M, K) bf16/fp16, packed (K/2, N) uint8, scales (K/G, N)."""
    triton, kernels = _kernels()
    m, k = x.shape
    n = packed.shape[1]
    x = x.contiguous()
    small = m <= SMALL_M
    y = torch.zeros((m, n), device=x.device, dtype=torch.float32) if small else torch.empty(
        (m, n), device=x.device, dtype=x.dtype)

    if m == 1:
        kernels["gemv"][lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])](
            x, packed, scales, y, n, k, packed.stride(0), scales.stride(0), GROUP=group_size)
        return y.to(x.dtype)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    kernels["small" if small else "large"][grid](
        x, packed, scales, y, m, n, k, x.stride(0), packed.stride(0), scales.stride(0), y.stride(0),
        GROUP=group_size)
    return y.to(x.dtype) if small else y


def per_token_quant(x: torch.Tensor, out: torch.Tensor, scales: torch.Tensor) -> None:
    """Dynamic per-token symmetric quantization into `out` (int8 or float8_e4m3fn), one pass:
    scales[m] = max|x[m]| / qmax, written into preallocated buffers (rows beyond x's are left)."""
    triton, kernels = _kernels()
    m, k = x.shape
    is_fp8 = out.dtype == torch.float8_e4m3fn
    kernels["quant"][(m,)](x, out, scales, k, x.stride(0), out.stride(0),
                           QMAX=448.0 if is_fp8 else 127.0, IS_FP8=is_fp8,
                           BLOCK=triton.next_power_of_2(k), num_warps=8 if k > 4096 else 4)
