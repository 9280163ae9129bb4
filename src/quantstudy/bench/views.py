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


def prediction_table(shape_name: str, shape: ModelShape, formats: list[str], hardwares: list, use_case: str) -> Table:
    from quantstudy.bench.cost import cost_table
    from quantstudy.bench.roofline_constants import USE_CASES

    prompt, output = USE_CASES[use_case]
    table = Table(title=f"{shape_name} · {use_case} ({prompt}/{output} tokens) · predicted (roofline)")
    for col in ("hw", "format", "support", "GPUs", "$/h", "sync s", "sync q/$", "async req/s", "async q/$ (GPUs)"):
        table.add_column(col, justify="left" if col in ("hw", "format", "support") else "right")
    for row in cost_table(shape, formats, hardwares, use_case):
        if row.gpus == 0:
            table.add_row(row.hardware, row.fmt, row.status, "–", "", "", "", "", "", end_section=False)
            continue
        table.add_row(row.hardware, row.fmt, row.status, str(row.gpus), f"{row.usd_per_hour:.2f}",
                      f"{row.latency_s:.2f}", f"{row.sync_queries_per_usd:,.0f}", f"{row.requests_per_s:.2f}",
                      f"{row.async_queries_per_usd:,.0f} ({row.async_gpus})")
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
