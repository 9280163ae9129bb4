"""Every format on the same N GPUs: the layouts it can take, and its latency-throughput curve.

The paper reports a node the way an operator owns it: "8xH100 serves X queries/s in each
format". A format that fits on fewer GPUs than the node has runs as data-parallel replicas
of some tensor-parallel size; a larger TP is faster per request (each GPU streams less),
more replicas batch more requests in all. So each format is swept over every layout that
divides N and holds the model, at every concurrency up to what its KV cache admits, and
the curve a user can reach is the upper envelope: for each latency, the layout and load
that serve the most queries per second.

That envelope is where the paper's crossover lives: at a tight latency budget the 4-bit
weights stream fastest (W4A16 wins); once batches are large enough for the linears to be
compute-bound, 8-bit tensor cores win (W8A8).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantstudy.bench.preflight import preflight
from quantstudy.bench.roofline import KernelTimes, kv_capacity_tokens, parallel_layout, resolve_hardware
from quantstudy.bench.roofline_constants import CPU_FACTORS, GPU_FACTORS, MAX_NUM_SEQS, NODE_GPUS, USE_CASES, Factors
from quantstudy.errors import QuantstudyError
from quantstudy.hardware import GPU
from quantstudy.models.shape import ModelShape

SATURATION = 0.95     # the saturation point: the lightest load reaching 95% of the best throughput


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    replicas: int

    @property
    def label(self) -> str:
        one = f"TP{self.tp}" + (f"xPP{self.pp}" if self.pp > 1 else "")
        return one if self.replicas == 1 else f"{self.replicas}x {one}"


@dataclass(frozen=True)
class LoadPoint:
    layout: str
    replicas: int
    concurrency: int          # requests in flight over the whole deployment
    latency_s: float          # one request, end to end, at this load
    itl_s: float              # one decode step at this load
    requests_per_s: float     # the whole deployment


@dataclass(frozen=True)
class DeploymentPrediction:
    fmt: str
    hardware: str
    gpus: int
    status: str
    kernel: str
    latency_layout: str       # the layout a lone request is fastest on
    latency_replicas: int     # ... and how many of it the GPUs hold (each serves its own stream)
    latency_s: float
    throughput_layout: str    # the layout serving the most requests/s
    requests_per_s: float
    saturation: LoadPoint     # the lightest load within 5% of the best throughput
    curve: tuple[LoadPoint, ...]   # the upper envelope, by increasing load
    note: str = ""

    def best_at_latency(self, budget_s: float) -> LoadPoint | None:
        """The most requests/s the deployment serves with every request under `budget_s`."""
        ok = [p for p in self.curve if p.latency_s <= budget_s]
        return max(ok, key=lambda p: p.requests_per_s) if ok else None


def layouts(shape: ModelShape, fmt: str, hw: GPU, gpus: int, context: int) -> list[Layout]:
    """Every (TP, PP, replicas) using exactly `gpus` whose replica holds the model plus one
    full-length request's KV cache."""
    out = []
    for per_replica in (1, 2, 4, 8, *range(16, gpus + 1, NODE_GPUS)):
        if per_replica > gpus or gpus % per_replica:
            continue
        try:
            tp, pp = parallel_layout(per_replica)
        except QuantstudyError:
            continue
        if kv_capacity_tokens(shape, fmt, hw, per_replica) >= context:
            out.append(Layout(tp, pp, gpus // per_replica))
    return out


def load_curve(eng: KernelTimes, layout: Layout, max_batch: int, prompt: int, output: int) -> list[LoadPoint]:
    """One layout at 1, 2, 4, ... requests per replica up to what it admits. At concurrency c
    a request's latency is its own prefill, the other prompts' arithmetic riding on the same
    steps, and `output` decode steps of c sequences; Little's law gives the rate."""
    loads = sorted({*(2**i for i in range(0, 12) if 2**i <= max_batch), max_batch})
    points = []
    for c in loads:
        latency, step = eng.loaded(c, prompt, output)
        points.append(LoadPoint(layout.label, layout.replicas, c * layout.replicas, latency, step,
                                layout.replicas * c / latency))
    return points


def envelope(points: list[LoadPoint]) -> tuple[LoadPoint, ...]:
    """The points no other beats on both latency and throughput, by increasing latency."""
    best, out = 0.0, []
    for p in sorted(points, key=lambda p: (p.latency_s, -p.requests_per_s)):
        if p.requests_per_s > best:
            out.append(p)
            best = p.requests_per_s
    return tuple(out)


def predict_deployment(shape: ModelShape, fmt: str, hardware: GPU | str, gpus: int,
                       use_case: str | tuple[int, int], factors: Factors | None = None,
                       max_num_seqs: int = MAX_NUM_SEQS) -> DeploymentPrediction:
    """`fmt` served on exactly `gpus` cards of `hardware`, in the layout and at the load that
    suit each latency budget. Raises a one-line error when no layout of `gpus` holds it."""
    hw = resolve_hardware(hardware)
    prompt, output = USE_CASES[use_case] if isinstance(use_case, str) else use_case
    support = preflight(fmt, hw)
    if not support.runs:
        raise QuantstudyError(f"{fmt} on {hw.name}: {support.reason}")
    if hw.is_cpu and gpus != 1:
        raise QuantstudyError("a CPU deployment is one machine: --gpus applies to GPUs")
    found = layouts(shape, fmt, hw, gpus, prompt + output)
    if not found:
        raise QuantstudyError(f"{fmt} on {gpus}x {hw.name}: no layout of {gpus} GPUs holds the model "
                              f"and one {prompt + output}-token request")
    factors = factors or (CPU_FACTORS if hw.is_cpu else GPU_FACTORS)
    points, lone = [], []
    for lay in found:
        eng = KernelTimes(shape, fmt, hw, lay.tp * lay.pp, factors)
        admits = kv_capacity_tokens(shape, fmt, hw, lay.tp * lay.pp) // (prompt + output)
        curve = load_curve(eng, lay, min(max_num_seqs * lay.pp, admits), prompt, output)
        lone.append(curve[0])
        points += curve
    curve = envelope(points)
    fastest = min(lone, key=lambda p: p.latency_s)
    top = max(curve, key=lambda p: p.requests_per_s)
    saturation = next(p for p in curve if p.requests_per_s >= SATURATION * top.requests_per_s)
    return DeploymentPrediction(fmt, hw.name, gpus, support.status, support.kernel, fastest.layout,
                                fastest.replicas, fastest.latency_s, top.layout, top.requests_per_s, saturation, curve,
                                support.reason if support.status == "fallback" else "")


def crossover(predictions: list[DeploymentPrediction], budgets: list[float]) -> list[tuple[float, str, float]]:
    """For each latency budget, the format serving the most requests/s under it:
    [(budget s, format, requests/s)], skipping budgets no format meets."""
    out = []
    for budget in budgets:
        best = [(p.fmt, pt.requests_per_s) for p in predictions if (pt := p.best_at_latency(budget))]
        if best:
            fmt, rps = max(best, key=lambda x: x[1])
            out.append((budget, fmt, rps))
    return out
