"""What a deployment costs: queries per dollar from roofline predictions and a price table.

Prices live in `data/prices.json` (editable, dated; the paper's Lambda prices marked as
such, the rest estimates). The paper's two cost metrics:
- synchronous: one request at a time, so a GPU-hour serves 3600 / latency queries;
- asynchronous: continuous batching at saturation, requests/s x 3600 per hour.
Both are divided by the hourly price of *all* GPUs the model needs, which is where 4-bit
weights save most at 405B: fewer GPUs, not faster ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from quantstudy.bench.preflight import preflight
from quantstudy.bench.roofline import Prediction, gpus_needed, predict, resolve_hardware
from quantstudy.errors import QuantstudyError
from quantstudy.hardware import GPU
from quantstudy.models.shape import ModelShape

PRICES_FILE = Path(__file__).with_name("data") / "prices.json"

__all__ = ["PRICES_FILE", "CostRow", "async_queries_per_dollar", "cost_table", "gpus_needed",
           "load_prices", "price_per_hour", "sync_queries_per_dollar"]


def load_prices(path: Path = PRICES_FILE) -> dict:
    """The price table, checked: every entry has a positive USD/hour and a source."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise QuantstudyError(f"cannot read price table {path}: {exc}") from None
    for section in ("gpus", "cpus"):
        for name, row in table.get(section, {}).items():
            price = row.get("usd_per_hour")
            if not isinstance(price, (int, float)) or price <= 0 or not row.get("source"):
                raise QuantstudyError(f"{path}: {section}.{name} needs a positive usd_per_hour and a source")
    return table


def price_per_hour(hardware: GPU | str, prices: dict | None = None, instance: str | None = None) -> float:
    """USD per hour of one device: a catalogue GPU, or for a CPU entry the instance type
    named (default: the table's `cpu_default`, the instance most like this machine)."""
    prices = prices or load_prices()
    hw = resolve_hardware(hardware) if not isinstance(hardware, GPU) else hardware
    if hw.is_cpu:
        key = instance or prices.get("cpu_default")
        row = prices.get("cpus", {}).get(key)
        if row is None:
            raise QuantstudyError(f"no CPU price for {key!r}; known: {', '.join(prices.get('cpus', {}))}")
        return float(row["usd_per_hour"])
    row = prices.get("gpus", {}).get(hw.name)
    if row is None:
        raise QuantstudyError(f"no price for GPU {hw.name!r} in the price table")
    return float(row["usd_per_hour"])


def sync_queries_per_dollar(pred: Prediction, usd_per_device_hour: float) -> float:
    return 3600.0 / (pred.latency_s * usd_per_device_hour * pred.gpus)


def async_queries_per_dollar(pred: Prediction, usd_per_device_hour: float) -> float:
    return pred.requests_per_s * 3600.0 / (usd_per_device_hour * pred.gpus)


@dataclass(frozen=True)
class CostRow:
    fmt: str
    hardware: str
    status: str               # preflight: native | fallback | refused
    gpus: int                 # 0 when refused or not fitting
    usd_per_hour: float       # all devices together
    latency_s: float
    sync_queries_per_usd: float
    requests_per_s: float
    async_queries_per_usd: float
    async_gpus: int = 0       # the GPU count that maximises async queries per dollar
    note: str = ""
    layout: str = ""          # sync: the layout a lone request runs on ('TP2', '4x TP2', ...)
    async_layout: str = ""    # async: the layout at the best throughput
    saturation_rps: float = 0.0       # fixed deployments: the lightest load within 5% of the best
    saturation_latency_s: float = 0.0 # ... and a request's latency there


def _layout_label(pred: Prediction) -> str:
    if pred.hardware.startswith("cpu"):
        return ""
    return f"TP{pred.tp}" + (f"xPP{pred.pp}" if pred.pp > 1 else "")


def _layouts(start: int, limit: int) -> list[int]:
    counts = [g for g in (1, 2, 4, 8, *range(16, 65, 8)) if start <= g <= limit]
    return counts or [start]


def fixed_row(shape: ModelShape, fmt: str, hw: GPU, use_case, gpus: int, price: float) -> CostRow:
    """One format on exactly `gpus` cards: every GPU is paid for whatever the format needs.
    Sync: a lone request on the fastest layout, each replica serving its own stream. Async:
    the layout and load serving the most requests/s (`deployment.predict_deployment`)."""
    from quantstudy.bench.deployment import predict_deployment

    support = preflight(fmt, hw)
    try:
        d = predict_deployment(shape, fmt, hw, gpus, use_case)
    except QuantstudyError as exc:
        return CostRow(fmt, hw.name, support.status, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, str(exc))
    total = price * gpus
    return CostRow(fmt, hw.name, support.status, gpus, total, d.latency_s,
                   3600.0 * d.latency_replicas / (d.latency_s * total), d.requests_per_s, d.requests_per_s * 3600.0 / total,
                   gpus, d.note, d.latency_layout, d.throughput_layout, d.saturation.requests_per_s,
                   d.saturation.latency_s)


def cost_table(shape: ModelShape, formats, hardwares, use_case, prices: dict | None = None,
               async_scale: int = 4, gpus: int | None = None) -> list[CostRow]:
    """One row per (format, hardware). Sync: the fewest GPUs that hold the model at the use
    case's context (more only split the same memory-bound step, at more cost). Async: the
    best queries per dollar over layouts up to `async_scale` x that minimum, because a model
    that barely fits has no room left for KV cache and so for batching (70B FP8 on one H100).
    With `gpus`, every format is priced on that many cards instead (`fixed_row`)."""
    prices = prices or load_prices()
    rows = []
    for hw_ref in hardwares:
        hw = resolve_hardware(hw_ref)
        price = price_per_hour(hw, prices)
        for fmt in formats:
            support = preflight(fmt, hw)
            if not support.runs:
                rows.append(CostRow(fmt, hw.name, "refused", 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, support.reason))
                continue
            if gpus is not None and not hw.is_cpu:
                rows.append(fixed_row(shape, fmt, hw, use_case, gpus, price))
                continue
            try:
                pred = predict(shape, fmt, hw, use_case)
            except QuantstudyError as exc:  # does not fit on any layout we model
                rows.append(CostRow(fmt, hw.name, support.status, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, str(exc)))
                continue
            if hw.is_cpu:
                batched = [pred]  # one machine: no layouts to choose from
            else:
                batched = [predict(shape, fmt, hw, use_case, gpus=g)
                           for g in _layouts(pred.gpus, pred.gpus * async_scale)]
            best = max(batched, key=lambda p: async_queries_per_dollar(p, price))
            rows.append(CostRow(fmt, hw.name, support.status, pred.gpus, price * pred.gpus, pred.latency_s,
                                sync_queries_per_dollar(pred, price), best.requests_per_s,
                                async_queries_per_dollar(best, price), best.gpus,
                                support.reason if support.status == "fallback" else "",
                                _layout_label(pred), _layout_label(best)))
    return rows
