"""Which kernel vLLM chose for each quantized layer type, read from its log, and what that
means: the format computed natively, through a weight-only fallback, or emulated.

vLLM logs its choice once per layer type ("Selected CPUInt8ScaledMMLinearKernel for
CompressedTensorsW8A8Int8", "Using CPUWNA16LinearKernel for CompressedTensorsWNA16") and
only warns, if at all, when a W8A8 checkpoint runs as weight-only (FP8 Marlin on cards
without FP8 units). A served number is recorded with these, so "FP8 accuracy measured on
vLLM" says whether FP8 arithmetic produced it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CHOICE = re.compile(r"(?:Selected|Using) (\w+(?:Kernel|Method|LinearKernel)) for (CompressedTensors\w+|[\w-]+ linear)")

NATIVE, FALLBACK, EMULATED, UNKNOWN = "native", "fallback", "emulated", "unknown"


@dataclass(frozen=True)
class KernelChoice:
    layer_type: str     # vLLM's scheme class (CompressedTensorsW8A8Int8, ...) or 'unquantized'
    kernel: str
    status: str         # native | fallback | emulated | unknown
    why: str


def classify(layer_type: str, kernel: str, device: str) -> KernelChoice:
    """What running `layer_type` through `kernel` on `device` ('cpu' or 'cuda') computes."""
    k, t = kernel.lower(), layer_type.lower()
    w8a8 = "w8a8" in t or "w4a8" in t or "nvfp4" in t and "a16" not in t
    if "emulat" in k:
        return KernelChoice(layer_type, kernel, EMULATED, "vLLM's emulation path: dequantized weights in 16-bit arithmetic")
    if "fp8" in t and device == "cpu" and "torch" in k:
        return KernelChoice(layer_type, kernel, EMULATED,
                            "no FP8 arithmetic on this CPU: torch's FP8 matmul converts to 16-bit per call")
    if w8a8 and "marlin" in k:
        return KernelChoice(layer_type, kernel, FALLBACK,
                            "weight-only Marlin: activations stay 16-bit, the card lacks the low-precision unit")
    if layer_type == "unquantized" or any(x in k for x in ("int8", "wna16", "marlin", "machete", "cutlass", "fp8",
                                                            "exllama", "conch", "allspark", "dynamic4bit")):
        return KernelChoice(layer_type, kernel, NATIVE, "the format's own arithmetic")
    return KernelChoice(layer_type, kernel, UNKNOWN, "a kernel this version of quantstudy does not know")


def kernels_from_log(log: str, device: str) -> list[KernelChoice]:
    """Every layer type's kernel, in the order vLLM logged them; a log with no quantized
    layer (a BF16 model) gives the unquantized path."""
    seen: dict[str, str] = {}
    for kernel, layer_type in _CHOICE.findall(log):
        if layer_type.endswith(" linear"):   # the generic line; the scheme's own line follows
            continue
        seen.setdefault(layer_type, kernel)
    if not seen:
        return [classify("unquantized", "UnquantizedLinearMethod", device)]
    return [classify(t, k, device) for t, k in seen.items()]


def device_from_log(log: str) -> str:
    m = re.search(r"device_config=(\w+)", log)
    return m.group(1) if m else "unknown"
