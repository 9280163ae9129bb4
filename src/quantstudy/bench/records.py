"""The bench stage's records as the study keeps them: measured runs and predicted costs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MeasuredRun:
    """One (format, use case, load profile) served and measured: `runner.BenchResult` as stored
    (the per-request records reduced to their count), with the study's variant name."""

    model: str                    # checkpoint folder
    fmt: str                      # bf16 or the scheme name the checkpoint records
    use_case: str
    prompt_tokens: int
    output_tokens: int
    scale: float
    profile: str                  # synchronous | concurrent | poisson | throughput
    params: dict                  # profile parameters (concurrency, rate, seed)
    metrics: dict                 # load.summarize(): latency percentiles, rates, goodput
    engine: dict = field(default_factory=dict)      # the server: url, version, args, startup
    hardware: dict = field(default_factory=dict)
    requests: int = 0
    variant: str | None = None
    # What ran it: vLLM's tensor-parallel size and the device's name ('NVIDIA H100 80GB HBM3',
    # 'cpu (AMD EPYC 9R14)'). An attached endpoint, or a record from before these fields: 1, ''.
    tensor_parallel_size: int = 1
    device: str = ""

    @property
    def mode(self) -> str:
        """The paper's two regimes: 'sync' (one request at a time) or 'async'."""
        return "sync" if self.profile == "synchronous" else "async"

    @property
    def gpus(self) -> int:
        """GPUs the engine used, from its recorded vLLM arguments (1 when not recorded)."""
        args = " ".join(map(str, self.engine.get("args") or []))
        tp = re.search(r"(?:--tensor-parallel-size|-tp)[ =](\d+)", args)
        pp = re.search(r"(?:--pipeline-parallel-size|-pp)[ =](\d+)", args)
        return (int(tp.group(1)) if tp else 1) * (int(pp.group(1)) if pp else 1)

    @property
    def profile_label(self) -> str:
        return {"synchronous": "sync", "concurrent": f"conc={self.params.get('concurrency')}",
                "poisson": f"rate={self.params.get('rate')}/s", "throughput": "max"}.get(self.profile, self.profile)


@dataclass(frozen=True)
class PredictedRow:
    """One roofline prediction: `cost.CostRow` for a model shape and use case."""

    shape: str
    use_case: str
    fmt: str
    hardware: str
    status: str                   # preflight: native | fallback | refused
    gpus: int                     # 0 when refused or not fitting
    usd_per_hour: float
    latency_s: float
    sync_queries_per_usd: float
    requests_per_s: float
    async_queries_per_usd: float
    async_gpus: int = 0
    note: str = ""
    layout: str = ""
    async_layout: str = ""
    saturation_rps: float = 0.0
    saturation_latency_s: float = 0.0


@dataclass(frozen=True)
class CurvePoint:
    """One load on a fixed deployment: `deployment.LoadPoint` as stored."""

    layout: str
    replicas: int
    concurrency: int
    latency_s: float
    itl_s: float
    requests_per_s: float


@dataclass(frozen=True)
class PredictedCurve:
    """A format's latency-throughput envelope on `gpus` cards (`deployment.predict_deployment`)."""

    shape: str
    use_case: str
    fmt: str
    hardware: str
    gpus: int
    points: tuple[CurvePoint, ...] = ()
    saturation_rps: float = 0.0
    saturation_latency_s: float = 0.0
