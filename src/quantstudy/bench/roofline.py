"""Roofline model of vLLM serving for hardware not at hand: latency, throughput, GPU count.

Every kernel is priced at max(compute time, memory time) against the hardware's ceilings
times an efficiency, and a decode step is the *sum* over the kernels it runs (linears,
lm_head, attention) -- they execute one after another, so a memory-bound attention
cannot hide a compute-bound linear. That is what produces the paper's crossover: at batch
1 every linear is memory-bound and 4-bit weights win; at batch 256 the linears become
compute-bound and FP8/INT8 tensor cores (2x the BF16 rate) win.

This module is the model alone: its constants and where each comes from are
`roofline_constants`; how the fitted ones were fitted is `roofline_fit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from quantstudy.bench.collectives import LINKS, NETWORK, NETWORK_BY_LINK, all_reduce_s, pipeline_hop_s
from quantstudy.bench.preflight import BASELINE, preflight
from quantstudy.bench.roofline_constants import (CPU_FACTORS, GPU_FACTORS, KERNELS, KV_BYTES,
                                                 MAX_NUM_SEQS, MEMORY_UTILIZATION, NODE_GPUS, SCALE_BYTES,
                                                 USE_CASES, Factors)
from quantstudy.errors import QuantstudyError
from quantstudy.hardware import GPU, get_gpu
from quantstudy.models.shape import ModelShape
from quantstudy.schemes import PRESETS, stored_weight_bytes


def resolve_hardware(hardware: GPU | str) -> GPU:
    """A catalogue GPU by name, or an entry given as is (a measured CPU). Never measures:
    "cpu" is refused here -- measure it once (`bench.cpu.measure_cpu`) and pass the entry."""
    if isinstance(hardware, GPU):
        return hardware
    if hardware.strip().lower().startswith("cpu"):
        raise QuantstudyError("the CPU has no catalogue entry: measure it first (bench.cpu.measure_cpu()) "
                              "and pass that entry")
    return get_gpu(hardware)


def linear_weight_bytes(shape: ModelShape, fmt: str) -> float:
    """Bytes of all decoder linears in a format, scales and zero points included."""
    if fmt == BASELINE:
        return 2.0 * shape.linear_params
    if fmt not in PRESETS:
        raise QuantstudyError(f"unknown format {fmt!r}; choose bf16 or one of: {', '.join(PRESETS)}")
    w = PRESETS[fmt].weights
    total = 0.0
    for n, k in shape.linear_shapes().values():
        total += stored_weight_bytes(w, n, k, SCALE_BYTES)
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


class KernelTimes:
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
        self.link = None if hw.is_cpu else LINKS[hw.link]
        self.network = NETWORK_BY_LINK.get(hw.link, NETWORK)
        # Fixed per-layer costs (kernel launches, norms, rotary, the sampler's share) do not
        # shrink when a layer is split across GPUs: this is what makes TP less than linear.
        self.fixed_s = factors.step_overhead_s + shape.layers * factors.layer_overhead_s

    def _flops_rate(self, dtype: str) -> float:
        peak = self.hw.peak_flops(dtype) or self.hw.peak_flops("bf16")  # no unit: bf16 path
        return peak * self.f.compute_eff.get(dtype, self.f.compute_eff["bf16"]) * self.tp

    def _mem_time(self, nbytes: float) -> float:
        return nbytes / (self.hw.bandwidth * self.f.bw_eff * self.tp)

    def _attn_flops(self, tokens: int, context: float) -> float:
        # QK^T and PV: 2 matmuls x 2 flops per multiply-add over every cached position.
        return 4.0 * self.shape.layers * self.shape.heads * self.shape.head_dim * tokens * context

    def comm(self, tokens: float) -> float:
        """Wire time of one forward over `tokens` rows: two all-reduces per layer under TP
        (vLLM's algorithm for the message size and link) and a hand-off per stage boundary."""
        message = 2.0 * tokens * self.shape.hidden
        t = 2 * self.shape.layers * all_reduce_s(message, self.tp, self.link) if self.tp > 1 else 0.0
        return t + (self.pp - 1) * pipeline_hop_s(message, self.network) if self.pp > 1 else t

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
        # A pipeline stage holds 1/pp of the layers but a token crosses all of them in turn,
        # so the per-token time is that of the whole model at this TP degree plus the hand-offs.
        return self.forward_s + lin + head + attn + self.comm(batch) + self.fixed_s

    def prefill_compute(self, tokens: int) -> float:
        lin, _ = self.linears(tokens)
        # Riding on a decode step, a prompt adds its arithmetic and its activations' bytes on
        # the wire (the collectives' latency is paid by the step anyway).
        wire = max(0.0, self.comm(tokens) - self.comm(1)) if self.tp * self.pp > 1 else 0.0
        return lin + self._attn_flops(tokens, tokens / 2) / self._flops_rate("bf16") + wire

    def loaded(self, concurrency: int, prompt: int, output: int) -> tuple[float, float]:
        """(one request's latency s, decode step s) with `concurrency` requests always in flight:
        its own prefill, the other prompts' arithmetic riding on the same steps (spread over the
        pipeline stages), and `output` decode steps of the batch."""
        step = self.step(ceil(concurrency / self.pp), prompt + output / 2)
        latency = self.prefill(prompt) + (concurrency - 1) * self.prefill_compute(prompt) / self.pp + output * step
        return latency, step

    def prefill(self, tokens: int) -> float:
        # Alone, a prompt also has to stream the weights once: short prompts are memory-bound.
        lin = max(self.linears(tokens))
        attn = self._attn_flops(tokens, tokens / 2) / self._flops_rate("bf16")
        return (self.forward_s + lin + attn + self._mem_time(2.0 * self.head_params) + self.comm(tokens)
                + self.fixed_s)


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
    factors = factors or (CPU_FACTORS if hw.is_cpu else GPU_FACTORS)
    eng = KernelTimes(shape, fmt, hw, gpus, factors)
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
