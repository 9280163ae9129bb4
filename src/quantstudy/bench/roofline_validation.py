"""The roofline against published vLLM measurements: fitted on a third, judged on the rest.

`data/vllm_published.json` holds cells collected from model cards, vLLM's and vendors'
posts and papers -- each one measurement (model, format, GPU, GPU count, workload, metric,
value) with its source and a quote. `split` fixes which third the GPU constants are
fitted to *by position alone* (cells sorted by source, GPU, model, format, metric and id;
every third one, starting with the first), so the choice is made before any error is
seen and spreads the fit over sources, cards and formats. `fit_gpu_factors` sees only
that third (a test poisons the others and checks the constants do not move);
`errors` prices every cell so both sets can be printed side by side.

What is fitted: the fraction of datasheet bandwidth a decode step streams at, a fixed cost
per engine step, a fixed cost per decoder layer (what makes TP less than linear), and one
scale on the measured GEMM efficiencies (what large batches and prefills reach in an
engine rather than a GEMM benchmark). Least squares on log(predicted / measured), so a
cell 2x off counts the same above or below.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from quantstudy.bench.roofline import KernelTimes, kv_capacity_tokens, predict
from quantstudy.bench.roofline_constants import GPU_FACTORS, MAX_NUM_SEQS, Factors, gpu_factors
from quantstudy.errors import QuantstudyError
from quantstudy.hardware import get_gpu
from quantstudy.models.shape import ModelShape

CELLS_FILE = Path(__file__).with_name("data") / "vllm_published.json"
METRICS = ("sync_latency_s", "requests_per_s", "output_tok_s", "tpot_ms", "ttft_ms")
LATENCY_METRICS = ("sync_latency_s", "tpot_ms", "ttft_ms")


@dataclass(frozen=True)
class Cell:
    id: str
    model: str
    format: str
    gpu: str
    gpus: int
    metric: str
    prompt_tokens: int
    output_tokens: int
    value: float
    source: str
    concurrency: int | None = None     # None: saturation (the most the server sustained)
    tp: int | None = None
    memory_gb: float | None = None
    notes: str = ""

    @property
    def kind(self) -> str:
        return "latency" if self.metric in LATENCY_METRICS else "throughput"


def load_cells(path: Path = CELLS_FILE) -> list[Cell]:
    """The usable cells: those with a known shape, GPU, metric and token counts."""
    try:
        raw = json.loads(Path(path).read_text())["cells"]
    except (OSError, ValueError, KeyError) as exc:
        raise QuantstudyError(f"cannot read published measurements {path}: {exc}") from None
    keep = {f for f in Cell.__dataclass_fields__}
    cells = []
    for row in raw:
        if (row.get("metric") not in METRICS or not row.get("prompt_tokens") or not row.get("output_tokens")
                or row.get("exclude")):
            continue   # no workload to price (a dataset's unknown mean lengths), or flagged unreliable
        cells.append(Cell(**{k: v for k, v in row.items() if k in keep and v is not None}))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise QuantstudyError(f"{path}: duplicate cell ids")
    return cells


def split(cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """(fit, validation): every third cell in (source, gpu, model, format, metric, id) order."""
    ordered = sorted(cells, key=lambda c: (c.source, c.gpu, c.model, c.format, c.metric, c.id))
    return ordered[0::3], [c for i, c in enumerate(ordered) if i % 3]


def _hardware(cell: Cell):
    hw = get_gpu(cell.gpu)
    return replace(hw, memory_gb=cell.memory_gb) if cell.memory_gb else hw


def predict_cell(cell: Cell, factors: Factors = GPU_FACTORS) -> float:
    """The roofline's figure for one cell, in the cell's unit."""
    shape, hw = ModelShape.known(cell.model), _hardware(cell)
    workload = (cell.prompt_tokens, cell.output_tokens)
    gpus = cell.tp or cell.gpus
    if cell.metric in ("sync_latency_s", "ttft_ms") or (cell.metric == "tpot_ms" and (cell.concurrency or 1) == 1):
        p = predict(shape, cell.format, hw, workload, gpus=gpus, factors=factors)
        return {"sync_latency_s": p.latency_s, "ttft_ms": p.prefill_s * 1e3, "tpot_ms": p.decode_step_s * 1e3}[
            cell.metric]
    replicas = max(1, cell.gpus // gpus)
    if cell.concurrency is None:   # saturation
        p = predict(shape, cell.format, hw, workload, gpus=gpus, factors=factors)
        rps = p.requests_per_s * replicas
        step = p.batch_step_s
    else:
        eng = KernelTimes(shape, cell.format, hw, gpus, factors)
        admits = kv_capacity_tokens(shape, cell.format, hw, gpus) // sum(workload)
        c = max(1, min(math.ceil(cell.concurrency / replicas), admits, MAX_NUM_SEQS * eng.pp))
        latency, step = eng.loaded(c, cell.prompt_tokens, cell.output_tokens)
        rps = replicas * c / latency
    return {"requests_per_s": rps, "output_tok_s": rps * cell.output_tokens, "tpot_ms": step * 1e3}[cell.metric]


def log_errors(cells: list[Cell], factors: Factors = GPU_FACTORS) -> list[float]:
    return [math.log(predict_cell(c, factors) / c.value) for c in cells]


def relative_error(cell: Cell, factors: Factors = GPU_FACTORS) -> float:
    """predicted / measured - 1."""
    return predict_cell(cell, factors) / cell.value - 1.0


# -- the fit ------------------------------------------------------------------------------

def fit_gpu_factors(cells: list[Cell], iterations: int = 30) -> tuple[float, float, float, float]:
    """(bandwidth efficiency, step overhead s, per-layer overhead s, compute scale): the
    Levenberg-Marquardt least-squares fit of log errors, in log parameters from a physical
    start (0.8, 2 ms, 20 us, 1); deterministic. `roofline_constants.gpu_factors` makes them
    factors."""
    import numpy as np

    theta = np.log([0.8, 2e-3, 2e-5, 1.0])
    lam = 1e-2

    def residuals(t):
        return np.array(log_errors(cells, gpu_factors(*np.exp(t))))

    r = residuals(theta)
    for _ in range(iterations):
        jac = np.empty((len(r), len(theta)))
        for j in range(len(theta)):
            d = np.zeros_like(theta)
            d[j] = 1e-4
            jac[:, j] = (residuals(theta + d) - r) / 1e-4
        a, g = jac.T @ jac, jac.T @ r
        step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-9), -g)
        trial = residuals(theta + step)
        if trial @ trial < r @ r:
            theta, r, lam = theta + step, trial, lam / 3
            if np.abs(step).max() < 1e-6:
                break
        else:
            lam *= 5
    bw, step, layer, scale = (float(x) for x in np.exp(theta))
    return min(bw, 1.0), step, layer, scale


def median_abs(values: list[float]) -> float:
    xs = sorted(abs(v) for v in values)
    if not xs:
        return float("nan")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])
