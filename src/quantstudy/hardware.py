"""The GPU catalogue and the one resolver from a hardware name to an entry.

Rates are dense (no structured sparsity) tensor-core peaks from the vendors' datasheets
(SXM parts where there are several). They are upper bounds; what an engine reaches of
them is the roofline's business (`bench.roofline_constants`).

Every floor that meets a hardware name (a study's deployment, the bench's device, the
report's preflight notes, `nvidia-smi`'s "NVIDIA RTX A6000") resolves it here, so one
spelling is accepted or refused the same way everywhere. A CPU is not in the catalogue:
its entry is measured (`bench.cpu.measure_cpu`) and reuses the `GPU` dataclass under a
name starting with 'cpu'. Resolving a name never measures anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from quantstudy.errors import QuantstudyError


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float
    hbm_tb_s: float                      # memory bandwidth, TB/s (10^12 bytes/s)
    tflops: dict = field(hash=False)     # dense tensor-core rate per GEMM dtype, 10^12 op/s
    compute_capability: tuple[int, int] = (0, 0)
    link: str = "pcie4"                  # GPU-to-GPU link in a node (bench.collectives.LINKS)

    def peak_flops(self, gemm_dtype: str) -> float | None:
        """Op/s for a GEMM dtype ('bf16', 'fp8', 'int8'); None where the card has no such unit."""
        rate = self.tflops.get(gemm_dtype)
        return None if rate is None else rate * 1e12

    @property
    def bandwidth(self) -> float:
        return self.hbm_tb_s * 1e12

    @property
    def is_cpu(self) -> bool:
        """CPU entries (measured by bench.cpu) reuse this dataclass; their names start 'cpu'."""
        return self.name.startswith("cpu")


GPUS: dict[str, GPU] = {g.name: g for g in [
    # Ampere workstation: FP16/BF16 tensor rate with FP32 accumulate, no FP8 unit.
    # Workstation and PCIe cards talk over PCIe 4.0 (an A6000 pair's NVLink bridge is not
    # assumed: servers of 4-8 A6000s rarely have one); SXM parts over NVLink through NVSwitch.
    GPU("a6000", 48, 0.768, {"bf16": 154.8, "int8": 309.7}, (8, 6), "pcie4"),
    GPU("a100", 80, 2.039, {"bf16": 312.0, "int8": 624.0}, (8, 0), "nvlink3"),
    GPU("l40s", 48, 0.864, {"bf16": 362.0, "fp8": 733.0, "int8": 733.0}, (8, 9), "pcie4"),
    GPU("h100", 80, 3.35, {"bf16": 989.0, "fp8": 1979.0, "int8": 1979.0}, (9, 0), "nvlink4"),
    # Same Hopper die as the H100 with more and faster HBM3e.
    GPU("h200", 141, 4.8, {"bf16": 989.0, "fp8": 1979.0, "int8": 1979.0}, (9, 0), "nvlink4"),
    # Blackwell adds FP4 tensor cores (dense 9 PFLOPS, twice its FP8 rate; NVIDIA's datasheet
    # quotes 18 with 2:4 sparsity).
    GPU("b200", 180, 8.0, {"bf16": 2250.0, "fp8": 4500.0, "int8": 4500.0, "fp4": 9000.0}, (10, 0), "nvlink5"),
]}


def find_gpu(name: str | None) -> GPU | None:
    """The catalogue entry a name means, or None. Accepts our short names ('h100'), device
    names as drivers print them ('NVIDIA H100 80GB HBM3', 'NVIDIA RTX A6000') and the like:
    the longest catalogue name found inside the flattened text wins."""
    if not name:
        return None
    flat = re.sub(r"[\s_-]", "", name.lower()).replace("nvidia", "")
    exact = [g for g in GPUS.values() if flat == g.name or flat.startswith(g.name)]
    inside = exact or [g for g in GPUS.values() if g.name in flat]
    return max(inside, key=lambda g: len(g.name)) if inside else None


def get_gpu(name: str) -> GPU:
    gpu = find_gpu(name)
    if gpu is None:
        raise QuantstudyError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
    return gpu


def hardware_key(name: str | None) -> str:
    """Canonical hardware name ('NVIDIA H100 80GB' -> 'h100'), so bench, predictions and the
    deployment match whatever spelling each used. Names outside the catalogue (CPU entries)
    are lower-cased."""
    if not name:
        return ""
    gpu = find_gpu(name)
    return gpu.name if gpu else name.strip().lower()


def cpu_model() -> str:
    """This machine's CPU model name, as /proc/cpuinfo gives it."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_entry(name: str, memory_gib: float | None = None,
                 compute_capability: tuple[int, int] | None = None) -> GPU:
    """A device as its driver reports it ('NVIDIA A100-SXM4-40GB', 39.6 GiB, (8, 0)) as a
    hardware entry: the catalogue's card under its catalogue name (so bench, predictions and
    the deployment still match) with the memory and compute capability the device reports --
    an A100 may hold 40 or 80 GB. A card outside the catalogue ('NVIDIA L4') keeps its own
    name and has no rates (`tflops` empty, no bandwidth): preflight then decides by compute
    capability alone, and nothing is predicted for it."""
    import dataclasses

    cc = tuple(compute_capability) if compute_capability and tuple(compute_capability) != (0, 0) else None
    memory = round(memory_gib, 1) if memory_gib else None
    known = find_gpu(name)
    if known is None:
        return GPU(name.strip(), memory or 0.0, 0.0, {}, cc or (0, 0))
    changes = {"memory_gb": memory, "compute_capability": cc}
    return dataclasses.replace(known, **{k: v for k, v in changes.items() if v is not None})
