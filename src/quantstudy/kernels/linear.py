"""The four serving formats of one linear layer, as a GPU executes them.

`prepare(w, fmt)` quantizes a float weight once (weights are static in serving);
`PreparedLinear.forward(x)` runs the layer on a batch of tokens the way an engine does:
  bf16   torch.matmul (cuBLAS)
  fp8    per-token dynamic FP8 activations x per-channel FP8 weights, torch._scaled_mm
  int8   per-token dynamic INT8 activations x per-channel INT8 weights, torch._int_mm
         (int32 accumulate) then both scales applied in fp32
  w4a16  INT4 symmetric weights in groups of 128, bf16 activations: our Triton kernel
         (`w4a16-triton`) or PyTorch's tinygemm (`w4a16-tinygemm`) where present
`reference(x)` is the float64 product of exactly the operands the kernel saw (the same
quantized activations and weights), so a kernel is checked for its arithmetic alone;
quantization error is a separate, expected quantity (`float_reference`).

On a machine without CUDA the same functions run through PyTorch's CPU ops (FP8 and INT8
GEMMs exist there too) and the W4A16 path through the Triton interpreter when
TRITON_INTERPRET=1 is set, or a dequantize-then-matmul reference otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from quantstudy.kernels import w4a16_triton
from quantstudy.schemes import PRESETS, stored_weight_bytes

FORMATS = ("bf16", "fp8", "int8", "w4a16-triton", "w4a16-tinygemm")
GEMM_DTYPE = {"bf16": "bf16", "fp8": "fp8", "int8": "int8", "w4a16-triton": "bf16", "w4a16-tinygemm": "bf16"}
FP8_MAX, INT8_MAX = 448.0, 127.0
# cuBLAS's int8 GEMM (torch._int_mm on CUDA) wants more than 16 rows: pad small batches.
INT_MM_MIN_ROWS = 32


def triton_usable(device: torch.device) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def weight_bytes(n: int, k: int, fmt: str, group_size: int = 128) -> int:
    """Bytes a format stores for an (N, K) weight, scales included: the one formula
    (`schemes.stored_weight_bytes`) with this benchmark's fp32 W8A8 scales and bf16 INT4 ones."""
    if fmt == "bf16":
        return 2 * n * k
    if fmt in ("fp8", "int8"):
        return int(stored_weight_bytes(PRESETS[f"w8a8-{fmt}"].weights, n, k, scale_bytes=4))
    return int(stored_weight_bytes(PRESETS["w4a16"].with_group_size(group_size).weights, n, k, scale_bytes=2))


@dataclass
class PreparedLinear:
    fmt: str
    n: int
    k: int
    tensors: dict = field(default_factory=dict)
    group_size: int = 128

    # --- activation quantization (dynamic, per token) -------------------------------------
    def quantize_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, scales) padded to the GEMM's minimum rows; rows past x's are zero."""
        m = x.shape[0]
        rows = m
        if x.is_cuda:  # cuBLAS(Lt) shape rules: int8 needs > 16 rows, fp8 rows in multiples of 16
            rows = max(m, INT_MM_MIN_ROWS) if self.fmt == "int8" else -(-m // 16) * 16
        qdtype = torch.float8_e4m3fn if self.fmt == "fp8" else torch.int8
        q = torch.zeros((rows, self.k), device=x.device, dtype=qdtype)
        scales = torch.ones((rows, 1), device=x.device, dtype=torch.float32)
        if x.is_cuda and triton_usable(x.device):
            w4a16_triton.per_token_quant(x, q, scales)
        else:
            qmax = FP8_MAX if self.fmt == "fp8" else INT8_MAX
            amax = x.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
            scales[:m] = amax / qmax
            v = (x.float() / scales[:m]).clamp(-qmax, qmax)
            q[:m] = v.to(qdtype) if self.fmt == "fp8" else v.round().to(torch.int8)
        return q, scales

    # --- the layer ------------------------------------------------------------------------
    def gemm(self, x: torch.Tensor, q: torch.Tensor | None = None, sx: torch.Tensor | None = None) -> torch.Tensor:
        """The GEMM (and epilogue) given already-quantized activations for W8A8 formats."""
        t, m = self.tensors, x.shape[0]
        if self.fmt == "bf16":
            return torch.matmul(x, t["w"].t())
        if self.fmt == "fp8":
            return torch._scaled_mm(q, t["w"].t(), scale_a=sx, scale_b=t["scale_row"],
                                    out_dtype=torch.bfloat16)[:m]
        if self.fmt == "int8":
            acc = torch._int_mm(q, t["w"].t())[:m]
            return (acc.float() * sx[:m] * t["scale_row"]).to(torch.bfloat16)
        if self.fmt == "w4a16-triton":
            if triton_usable(x.device):
                return w4a16_triton.w4a16_matmul(x, t["packed"], t["scales"], self.group_size)
            return torch.matmul(x.float(), self.dequantized_weight().float().t()).to(x.dtype)
        if self.fmt == "w4a16-tinygemm":
            return torch._weight_int4pack_mm(x, t["packed"], self.group_size, t["scales_and_zeros"])
        raise ValueError(self.fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fmt in ("fp8", "int8"):
            q, sx = self.quantize_activations(x)
            return self.gemm(x, q, sx)
        return self.gemm(x)

    # --- references -----------------------------------------------------------------------
    def dequantized_weight(self) -> torch.Tensor:
        t = self.tensors
        if self.fmt == "bf16":
            return t["w"].double()
        if self.fmt in ("fp8", "int8"):
            return t["w"].double() * t["scale_row"].double().t()
        return (t["q"].double().reshape(self.n, -1, self.group_size)
                * t["scales"].double().t().unsqueeze(-1)).reshape(self.n, self.k)

    def reference(self, x: torch.Tensor, q: torch.Tensor | None = None, sx: torch.Tensor | None = None):
        """float64 product of the operands the kernel saw (on their device: cuBLAS DGEMM on a GPU)."""
        w = self.dequantized_weight()
        if self.fmt in ("fp8", "int8"):
            xd = q[: x.shape[0]].double() * sx[: x.shape[0]].double()
        else:
            xd = x.double()
        return xd @ w.t()


def prepare(w: torch.Tensor, fmt: str, group_size: int = 128) -> PreparedLinear:
    """Quantize a float (N, K) weight for `fmt` on its device (RTN, symmetric)."""
    n, k = w.shape
    w = w.float()
    p = PreparedLinear(fmt, n, k, group_size=group_size)
    if fmt == "bf16":
        p.tensors["w"] = w.to(torch.bfloat16).contiguous()
    elif fmt in ("fp8", "int8"):
        qmax = FP8_MAX if fmt == "fp8" else INT8_MAX
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / qmax
        v = (w / scale).clamp(-qmax, qmax)
        p.tensors["w"] = (v.to(torch.float8_e4m3fn) if fmt == "fp8" else v.round().to(torch.int8)).contiguous()
        p.tensors["scale_row"] = scale.t().contiguous()          # (1, N) fp32
    elif fmt.startswith("w4a16"):
        g = w.reshape(n, k // group_size, group_size)
        scale = (g.abs().amax(dim=2, keepdim=True).clamp(min=1e-12) / 7.5).to(torch.bfloat16)
        q = (g / scale.float()).round().clamp(-8, 7).to(torch.int8).reshape(n, k)
        p.tensors["q"] = q
        p.tensors["scales"] = scale.reshape(n, -1).t().contiguous()  # (K/G, N) bf16
        if fmt == "w4a16-triton":
            p.tensors["packed"] = w4a16_triton.pack_int4_groups(q, group_size)
        else:
            _prepare_tinygemm(p, q)
    else:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return p


def _prepare_tinygemm(p: PreparedLinear, q: torch.Tensor, inner_k_tiles: int = 8) -> None:
    """PyTorch's tinygemm layout (as torchao packs it): unsigned nibbles, two per byte along
    K, then `_convert_weight_to_int4pack`; dequantization is (u - 8) * scale + zero with
    zero = 0 for a symmetric scheme."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    p.tensors["packed"] = torch.ops.aten._convert_weight_to_int4pack((u[:, ::2] << 4 | u[:, 1::2]).contiguous(),
                                                                     inner_k_tiles)
    scales = p.tensors["scales"]                                 # (K/G, N)
    p.tensors["scales_and_zeros"] = torch.stack([scales, torch.zeros_like(scales)], dim=2).contiguous()


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||; infinite when the output holds NaN or Inf."""
    out = out.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp(min=1e-30)).item()
