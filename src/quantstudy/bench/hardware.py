"""GPU catalogue: the datasheet ceilings a roofline model needs, and measured efficiencies.

Rates are dense (no structured sparsity) tensor-core peaks from the vendors' datasheets
(SXM parts where there are several). They are upper bounds; `measured_efficiency()`
reads what our own kernel benchmark achieved on a real card (benchmarks/gpu_kernels.py
writes `data/gpu_efficiency.json`), which is what turns a ceiling into a prediction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from quantstudy.errors import QuantstudyError

EFFICIENCY_FILE = Path(__file__).with_name("data") / "gpu_efficiency.json"


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float
    hbm_tb_s: float                      # memory bandwidth, TB/s (10^12 bytes/s)
    tflops: dict = field(hash=False)     # dense tensor-core rate per GEMM dtype, 10^12 op/s
    compute_capability: tuple[int, int] = (0, 0)

    def peak_flops(self, gemm_dtype: str) -> float | None:
        """Op/s for a GEMM dtype ('bf16', 'fp8', 'int8'); None where the card has no such unit."""
        rate = self.tflops.get(gemm_dtype)
        return None if rate is None else rate * 1e12

    @property
    def bandwidth(self) -> float:
        return self.hbm_tb_s * 1e12


GPUS: dict[str, GPU] = {g.name: g for g in [
    # Ampere workstation: FP16/BF16 tensor rate with FP32 accumulate, no FP8 unit.
    GPU("a6000", 48, 0.768, {"bf16": 154.8, "int8": 309.7}, (8, 6)),
    GPU("a100", 80, 2.039, {"bf16": 312.0, "int8": 624.0}, (8, 0)),
    GPU("l40s", 48, 0.864, {"bf16": 362.0, "fp8": 733.0, "int8": 733.0}, (8, 9)),
    GPU("h100", 80, 3.35, {"bf16": 989.0, "fp8": 1979.0, "int8": 1979.0}, (9, 0)),
    # Same Hopper die as the H100 with more and faster HBM3e.
    GPU("h200", 141, 4.8, {"bf16": 989.0, "fp8": 1979.0, "int8": 1979.0}, (9, 0)),
    GPU("b200", 180, 8.0, {"bf16": 2250.0, "fp8": 4500.0, "int8": 4500.0}, (10, 0)),
]}


def get_gpu(name: str) -> GPU:
    key = name.lower().replace("nvidia", "").replace(" ", "").replace("-", "")
    for gpu in GPUS.values():
        if key == gpu.name or key.startswith(gpu.name):
            return gpu
    raise QuantstudyError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")


def measured_efficiency(path: Path = EFFICIENCY_FILE) -> dict:
    """What benchmarks/gpu_kernels.py measured: card, date, and per-format fractions of the
    datasheet ceilings ({'decode_bandwidth': {fmt: f}, 'prefill_compute': {fmt: f}}).
    Empty when no GPU run has been recorded yet."""
    if not path.is_file():
        return {}
    return json.loads(path.read_text())
