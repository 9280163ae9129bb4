"""Terminal views of the bench stage's predictions: cost table per use case, preflight grid."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from quantstudy.errors import QuantstudyError
from quantstudy.models.shape import KNOWN_CONFIGS, ModelShape


def resolve_shape(ref: str) -> ModelShape:
    """A known shape name, a config.json, a model folder, or any model reference quantstudy loads."""
    if ref in KNOWN_CONFIGS:
        return ModelShape.known(ref)
    path = Path(ref)
    if path.is_file() and path.suffix == ".json":
        return ModelShape.from_config(json.loads(path.read_text()))
    if path.is_dir() and (path / "config.json").is_file():
        return ModelShape.from_config(json.loads((path / "config.json").read_text()))
    from quantstudy.models import resolve_model

    try:
        folder = resolve_model(ref)
    except QuantstudyError:
        raise QuantstudyError(f"cannot find a model config for {ref!r}: give a known shape "
                              f"({', '.join(KNOWN_CONFIGS)}), a config.json, or a model folder") from None
    return ModelShape.from_config(json.loads((Path(folder) / "config.json").read_text()))


def prediction_table(shape_name: str, shape: ModelShape, formats: list[str], hardwares: list, use_case: str,
                     gpus: int | None = None) -> Table:
    from quantstudy.bench.cost import cost_table
    from quantstudy.bench.roofline_constants import USE_CASES

    prompt, output = USE_CASES[use_case]
    where = f" · on {gpus} GPUs each" if gpus else ""
    table = Table(title=f"{shape_name} · {use_case} ({prompt}/{output} tokens){where} · predicted (roofline)")
    for col in ("hw", "format", "support", "GPUs", "$/h", "sync layout", "sync s", "sync q/$", "async layout",
                "async req/s", "async q/$ (GPUs)"):
        table.add_column(col, justify="left" if col in ("hw", "format", "support") else "right")
    for row in cost_table(shape, formats, hardwares, use_case, gpus=gpus):
        if row.gpus == 0 and row.status != "refused" and row.note:
            table.caption = ((table.caption + "\n") if table.caption else "") + f"{row.hardware} {row.fmt}: {row.note}"
        if row.gpus == 0:
            table.add_row(row.hardware, row.fmt, row.status, "–", "", "", "", "", "", "", "", end_section=False)
            continue
        table.add_row(row.hardware, row.fmt, row.status, str(row.gpus), f"{row.usd_per_hour:.2f}", row.layout,
                      f"{row.latency_s:.2f}", f"{row.sync_queries_per_usd:,.0f}", row.async_layout,
                      f"{row.requests_per_s:.2f}", f"{row.async_queries_per_usd:,.0f} ({row.async_gpus})")
    return table


def deployment_curves(shape: ModelShape, formats: list[str], hardware, use_case: str, gpus: int) -> list:
    """`deployment.predict_deployment` for every format that runs and fits on `gpus` cards."""
    from quantstudy.bench.deployment import predict_deployment

    out = []
    for fmt in formats:
        try:
            out.append(predict_deployment(shape, fmt, hardware, gpus, use_case))
        except QuantstudyError:
            continue   # refused or not fitting: the cost table says why
    return out


BUDGET_MULTIPLES = (1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def curve_table(shape_name: str, shape: ModelShape, formats: list[str], hardware, use_case: str,
                gpus: int) -> Table | None:
    """Requests/s each format serves on the deployment under latency budgets (multiples of the
    fastest lone request): the paper's latency-throughput trade-off and its crossover."""
    from quantstudy.bench.deployment import crossover
    from quantstudy.bench.roofline import resolve_hardware

    hw = resolve_hardware(hardware)
    curves = deployment_curves(shape, formats, hw, use_case, gpus)
    if not curves:
        return None   # no format fits: the cost table's notes say why
    table = Table(title=f"{shape_name} · {use_case} · {gpus}x {hw.name}: requests/s under a latency budget "
                        "(layout) · predicted")
    table.add_column("budget s", justify="right")
    for d in curves:
        table.add_column(d.fmt, justify="right")
    table.add_column("best", justify="left")
    fastest = min(d.latency_s for d in curves)
    budgets = [round(fastest * m, 2) for m in BUDGET_MULTIPLES]
    winners = {b: f for b, f, _ in crossover(curves, budgets)}
    for b in budgets:
        cells = []
        for d in curves:
            p = d.best_at_latency(b)
            cells.append("–" if p is None else f"{p.requests_per_s:.1f} ({p.layout}, c={p.concurrency})")
        table.add_row(f"{b:.2f}", *cells, winners.get(b, "–"))
    table.add_row("saturation", *(f"{d.saturation.requests_per_s:.1f} at {d.saturation.latency_s:.1f} s"
                                  for d in curves), "", end_section=True)
    return table


def preflight_notes(formats: list[str], hardwares: list) -> list[str]:
    """One line per format/hardware pair that does not run natively, with the reason."""
    from quantstudy.bench.preflight import preflight
    from quantstudy.bench.roofline import resolve_hardware

    notes = []
    for hw_ref in hardwares:
        hw = resolve_hardware(hw_ref)
        for fmt in formats:
            support = preflight(fmt, hw)
            if support.status != "native":
                notes.append(f"{fmt} on {hw.name}: {support.status} — {support.reason}")
    return notes
