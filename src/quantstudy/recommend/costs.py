"""What a candidate costs on the deployment: measured where the bench ran it, else predicted.

A cost is *measured* where the bench ran the format on the deployment's hardware and use
case at full size, otherwise *predicted* by the roofline model; every figure says which,
because the two are not equally trustworthy.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantstudy.bench.records import PredictedRow
from quantstudy.errors import QuantstudyError
from quantstudy.hardware import hardware_key
from quantstudy.results import StudyResults


@dataclass(frozen=True)
class Cost:
    queries_per_usd: float
    latency_s: float | None           # per query (mean measured, median under load, or predicted)
    slo_latency_s: float | None       # what a latency SLO is checked against (p90, or a lone request's)
    requests_per_s: float | None
    gpus: int
    usd_per_hour: float               # all GPUs of this deployment
    source: str                       # measured | predicted
    slo_unmet: bool = False           # async: no measured load level met the SLO


def usd_per_gpu(hw: str, predicted: list[PredictedRow]) -> float | None:
    for row in predicted:
        if row.hardware == hw and row.gpus:
            return row.usd_per_hour / row.gpus
    from quantstudy.bench.cost import load_prices

    prices = load_prices()
    row = prices["gpus"].get(hw) or (prices["cpus"].get(prices.get("cpu_default")) if hw.startswith("cpu") else None)
    return float(row["usd_per_hour"]) if row else None


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0 and x != float("inf")   # NaN > 0 is False


def measured_cost(fmt: str, dep: dict, hw: str, results: StudyResults, predicted: list[PredictedRow]) -> Cost | None:
    """Cost from the bench when it ran this format, use case and mode on this hardware at full size."""
    if hardware_key(results.bench.hardware if results.bench else None) != hw:
        return None
    points = [p for p in results.measured_points() if p.fmt == fmt and p.use_case == dep["use_case"]
              and p.mode == dep["mode"] and p.scale == 1.0 and _positive(p.requests_per_s)
              and _positive(p.e2e_mean_s) and _positive(p.e2e_median_s)]
    price = usd_per_gpu(hw, predicted)
    if not points or price is None:
        return None
    if dep["mode"] == "sync":
        p = points[0]
        usd, latency = price * p.gpus, p.e2e_mean_s   # the mean sets how many queries an hour holds
        return Cost(3600.0 / (latency * usd), latency, p.e2e_p90_s, p.requests_per_s, p.gpus, usd, "measured")
    # Async: the best load level whose tail latency meets the SLO (the paper's "queries per
    # second under latency limits"); without an SLO, the highest throughput measured.
    slo = dep["latency_slo_s"]
    meeting = [p for p in points if slo is None or (p.e2e_p90_s or float("inf")) <= slo]
    p = max(meeting or points, key=lambda q: q.requests_per_s)
    usd = price * p.gpus
    return Cost(p.requests_per_s * 3600.0 / usd, p.e2e_median_s, p.e2e_p90_s, p.requests_per_s, p.gpus, usd,
                "measured", slo_unmet=not meeting)


def predicted_cost(row: PredictedRow | None, mode: str) -> Cost | None:
    if not row or not row.gpus:
        return None
    if mode == "sync":
        return Cost(row.sync_queries_per_usd, row.latency_s, row.latency_s, row.requests_per_s, row.gpus,
                    row.usd_per_hour, "predicted")
    gpus = row.async_gpus or row.gpus
    # Async latency under load is not predicted; a lone request's latency is its lower bound.
    return Cost(row.async_queries_per_usd, row.latency_s, row.latency_s, row.requests_per_s, gpus,
                row.usd_per_hour / row.gpus * gpus, "predicted")


def support_status(fmt: str, hw: str, row: PredictedRow | None) -> tuple[str, str]:
    """(preflight status, note) of a format on the deployment's hardware."""
    if row:
        return row.status, row.note
    from quantstudy.bench.preflight import preflight
    from quantstudy.hardware import get_gpu

    try:
        s = preflight(fmt, get_gpu(hw))
    except QuantstudyError:
        return "unknown", ""
    return s.status, s.reason if s.status != "native" else ""


def with_predictions(results: StudyResults, hardware: str, use_case: str) -> StudyResults:
    """`results` with roofline rows for (hardware, use case) added where the study predicted
    none: a "what if I deploy there?" question answered from the study's model shape without
    rerunning it. The shape is the one the study predicted for (the model's own otherwise)."""
    from dataclasses import asdict, replace

    from quantstudy.bench.cost import cost_table
    from quantstudy.bench.views import resolve_shape

    hw = hardware_key(hardware)
    rows = results.predicted_rows()
    if any(r.hardware == hw and r.use_case == use_case for r in rows):
        return results
    shapes = list(dict.fromkeys(r.shape for r in rows))
    name = next((s for s in shapes if s in (results.model.name, results.model.ref)), None) or (
        shapes[0] if shapes else results.model.ref)
    formats = ["bf16", *(v.format.lower() for v in results.variants)]
    new = [PredictedRow(shape=name, use_case=use_case, **asdict(r))
           for r in cost_table(resolve_shape(name), formats, [hardware], use_case)]
    return replace(results, predicted=(*results.predicted, *new))
