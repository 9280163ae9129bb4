"""Quantization schemes as data.

A scheme says *what* a quantized model looks like (bits, number type, granularity,
which layers are left alone); it says nothing about *how* the numbers were chosen
(RTN, GPTQ, AWQ are algorithms, see `quantstudy.quantize`). The vocabulary follows
compressed-tensors' `QuantizationArgs` so checkpoints map one-to-one onto vLLM's
loaders, but these classes are frozen, hashable and free of pydantic/torch state, so a
scheme can key a cache or a results store.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from quantstudy.errors import QuantstudyError


class NumberType(str, enum.Enum):
    INT = "int"
    FLOAT = "float"


class Strategy(str, enum.Enum):
    """Granularity of a scale: one per tensor, output channel, input group, 2-D block, or token."""

    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"
    BLOCK = "block"
    TOKEN = "token"
    # GROUP scales times one FP32 scale per tensor (NVFP4: FP8 group scales whose range the
    # global scale stretches over the tensor's; compressed-tensors' `tensor_group`)
    TENSOR_GROUP = "tensor_group"


GROUPED = (Strategy.GROUP, Strategy.TENSOR_GROUP)   # strategies with one scale per input group

# Scale storage types a format fixes (None: the checkpoint's --dtype, bf16 by default).
# "e8m0": OCP-MX power-of-two scales, one biased exponent byte (uint8) each.
SCALE_DTYPES = ("float8_e4m3fn", "e8m0")


@dataclass(frozen=True)
class WeightQuant:
    """How a linear layer's weight [out_features, in_features] is quantized."""

    num_bits: int
    type: NumberType = NumberType.INT
    symmetric: bool = True
    strategy: Strategy = Strategy.CHANNEL
    group_size: int | None = None  # GROUP: contiguous input columns sharing a scale
    block: tuple[int, int] | None = None  # BLOCK: (rows, cols) sharing a scale
    scale_dtype: str | None = None  # a format-fixed scale type (SCALE_DTYPES): MX and NV formats

    def __post_init__(self) -> None:
        if self.type is NumberType.FLOAT and (self.num_bits not in (4, 8) or not self.symmetric):
            raise QuantstudyError("float weights must be symmetric FP8 E4M3 or FP4 E2M1")
        _check_fp_scales(self.num_bits, self.type, self.strategy, self.group_size, self.scale_dtype)
        if self.type is NumberType.INT and not 2 <= self.num_bits <= 8:
            raise QuantstudyError(f"integer weights need 2..8 bits, got {self.num_bits}")
        if self.strategy in GROUPED and (self.group_size or 0) <= 0:
            raise QuantstudyError("group strategy needs a positive group size")
        if self.strategy is Strategy.BLOCK and (
            self.block is None or min(self.block) <= 0
        ):
            raise QuantstudyError("block strategy needs a positive (rows, cols) block")
        if self.strategy is Strategy.TOKEN:
            raise QuantstudyError("weights cannot be quantized per token")


@dataclass(frozen=True)
class ActivationQuant:
    """How a linear layer's input activations are quantized at run time."""

    num_bits: int = 8
    type: NumberType = NumberType.INT
    symmetric: bool = True
    strategy: Strategy = Strategy.TOKEN
    dynamic: bool | str = True  # scales computed on the fly from each token
    group_size: int | None = None  # GROUP: per token, per group of input columns
    # NVFP4 sets dynamic="local" with TENSOR_GROUP: group scales on the fly, one static
    # global input scale per linear calibrated offline (compressed-tensors' DynamicType.LOCAL)
    scale_dtype: str | None = None

    def __post_init__(self) -> None:
        if not self.dynamic:
            raise QuantstudyError("only dynamic activation quantization is supported")
        if self.dynamic not in (True, "local"):
            raise QuantstudyError(f"activation dynamic must be true or 'local', got {self.dynamic!r}")
        if (self.dynamic == "local") != (self.strategy is Strategy.TENSOR_GROUP):
            raise QuantstudyError("'local' dynamic activations go with tensor_group scales, and only they")
        if self.strategy not in (Strategy.TOKEN, *GROUPED):
            raise QuantstudyError("dynamic activations are quantized per token or per group")
        if self.strategy in GROUPED and (self.group_size or 0) <= 0:
            raise QuantstudyError("per-group activations need a positive group size")
        if self.type is NumberType.FLOAT and self.num_bits not in (4, 8):
            raise QuantstudyError("float activations are FP8 E4M3 or FP4 E2M1")
        _check_fp_scales(self.num_bits, self.type, self.strategy, self.group_size, self.scale_dtype)


def _check_fp_scales(num_bits, type_, strategy, group_size, scale_dtype) -> None:
    """The combinations compressed-tensors' compressors and vLLM read: FP4 only with format-fixed
    group scales (NVFP4: tensor_group 16, FP8 scales; MXFP4: group 32, E8M0), E8M0 only in
    groups of 32 (compressed-tensors' `should_generate_mx_scales`)."""
    if scale_dtype is not None and scale_dtype not in SCALE_DTYPES:
        raise QuantstudyError(f"scale dtype must be one of {', '.join(SCALE_DTYPES)}, got {scale_dtype!r}")
    if type_ is NumberType.FLOAT and num_bits == 4 and scale_dtype is None:
        raise QuantstudyError("FP4 values need FP8 (NVFP4) or E8M0 (MXFP4) group scales")
    if scale_dtype == "e8m0" and (type_ is not NumberType.FLOAT or strategy is not Strategy.GROUP or group_size != 32):
        raise QuantstudyError("E8M0 scales are for FP4/FP8 values in groups of 32 (OCP MX)")
    if (strategy is Strategy.TENSOR_GROUP) != (scale_dtype == "float8_e4m3fn"):
        raise QuantstudyError("tensor_group scales are FP8 group scales under a global scale (NVFP4), and only they")


@dataclass(frozen=True)
class KVCacheQuant:
    """How the attention's keys and values are stored in the KV cache: FP8 E4M3 with static
    scales calibrated offline (max|K| / 448, after RoPE: what the cache holds), one per layer
    for K and one for V, or one per KV head with `per_head` (compressed-tensors' `attn_head`;
    vLLM's CPU and most GPU backends read their maximum). Independent of the weight format."""

    num_bits: int = 8
    type: NumberType = NumberType.FLOAT
    per_head: bool = False

    def __post_init__(self) -> None:
        if self.type is not NumberType.FLOAT or self.num_bits != 8:
            raise QuantstudyError("the KV cache is quantized to FP8 E4M3 only (what vLLM reads from a checkpoint)")

    @property
    def label(self) -> str:
        return "KV-FP8" + ("/head" if self.per_head else "")


KV_CACHE_PRESETS = {"fp8": KVCacheQuant(), "fp8-head": KVCacheQuant(per_head=True)}


def get_kv_cache(name: str | None) -> KVCacheQuant | None:
    """A KV-cache format by name (None or 'none': the 16-bit cache)."""
    if name is None or name.strip().lower() in ("none", "bf16", "auto"):
        return None
    key = name.strip().lower()
    if key not in KV_CACHE_PRESETS:
        raise QuantstudyError(f"unknown KV-cache format '{name}'; choose one of: none, {', '.join(KV_CACHE_PRESETS)}")
    return KV_CACHE_PRESETS[key]


@dataclass(frozen=True)
class Scheme:
    """A whole-model quantization format: weights, optional activations, skipped layers.

    `ignore` holds module names or `re:`-prefixed regular expressions, as in
    compressed-tensors; only `torch.nn.Linear` modules are ever quantized.
    """

    name: str
    weights: WeightQuant
    activations: ActivationQuant | None = None
    ignore: tuple[str, ...] = ("lm_head",)
    description: str = field(default="", compare=False)
    # An FP8 KV cache (issue 18), orthogonal to the weight format; None (every preset): 16-bit.
    kv_cache: KVCacheQuant | None = None

    @property
    def label(self) -> str:
        """Paper-style label: W8A8-FP8, W8A8-INT8, W4A16, ... (+KV-FP8 with an FP8 KV cache)."""
        w, a = self.weights, self.activations
        kv = "" if self.kv_cache is None else f"+{self.kv_cache.label}"
        if (named := _format_label(w, a)) is not None:
            return named + kv
        if a is None:
            return f"W{w.num_bits}A16" + ("-FP8" if w.type is NumberType.FLOAT else "") + kv
        kind = "FP8" if w.type is NumberType.FLOAT else f"INT{w.num_bits}"
        return f"W{w.num_bits}A{a.num_bits}-{kind}" + kv

    @property
    def static_input_scales(self) -> bool:
        """NVFP4 W4A4: each linear's activations need a calibrated static input global scale."""
        return self.activations is not None and self.activations.strategy is Strategy.TENSOR_GROUP

    @property
    def needs_calibration(self) -> bool:
        """Whether the format itself needs calibration data, whatever the algorithm: an FP8
        KV cache (its K/V scales) and NVFP4 W4A4 (each linear's static input global scale)."""
        return self.kv_cache is not None or self.static_input_scales

    @property
    def granularity(self) -> int | tuple[int, int] | None:
        """The group size or block shape that has to divide layer widths, if any."""
        if self.weights.strategy in GROUPED:
            return self.weights.group_size
        if self.weights.strategy is Strategy.BLOCK:
            return self.weights.block
        return None

    def with_group_size(self, size: int) -> "Scheme":
        """The same scheme with another group size (or square block side for block schemes).

        Per-group activations (fp8-block) follow the weight block width, as vLLM requires.
        """
        if size <= 0:
            raise QuantstudyError(f"--group-size must be positive, got {size}")
        w = self.weights
        if w.scale_dtype is not None and size != w.group_size:
            raise QuantstudyError(f"scheme {self.name} fixes its group size at {w.group_size} (part of the "
                                  "format: engines read no other); --group-size does not apply")
        if w.strategy in GROUPED:
            weights = dataclasses.replace(w, group_size=size)
        elif w.strategy is Strategy.BLOCK:
            weights = dataclasses.replace(w, block=(size, size))
        else:
            raise QuantstudyError(
                f"scheme {self.name} has {w.strategy.value}-wise weights: --group-size does not apply"
            )
        acts = self.activations
        if acts is not None and acts.strategy in GROUPED:
            acts = dataclasses.replace(acts, group_size=size)
        return dataclasses.replace(self, weights=weights, activations=acts)

    def with_ignore(self, ignore: tuple[str, ...]) -> "Scheme":
        return dataclasses.replace(self, ignore=tuple(ignore))

    def with_kv_cache(self, kv_cache: KVCacheQuant | None) -> "Scheme":
        return dataclasses.replace(self, kv_cache=kv_cache)


def _format_label(w: WeightQuant, a: ActivationQuant | None) -> str | None:
    """Labels of the formats named after their scales (NVFP4, MXFP4A16, MXFP8, ...), and
    W4A8-FP8 (INT4 weights, FP8 activations: the label names the activations' type).
    None for the paper's formats, whose labels stay as they were."""
    if w.scale_dtype is not None:
        family = "NV" if w.strategy is Strategy.TENSOR_GROUP else "MX"
        return f"{family}FP{w.num_bits}" + ("A16" if a is None else "")
    if a is not None and a.type is not w.type:
        return f"W{w.num_bits}A{a.num_bits}-" + ("FP8" if a.type is NumberType.FLOAT else f"INT{a.num_bits}")
    return None


_INT8_TOKEN = ActivationQuant(num_bits=8, type=NumberType.INT)
_FP8_TOKEN = ActivationQuant(num_bits=8, type=NumberType.FLOAT)
_NVFP4_W = WeightQuant(4, NumberType.FLOAT, strategy=Strategy.TENSOR_GROUP, group_size=16, scale_dtype="float8_e4m3fn")
_MXFP4_W = WeightQuant(4, NumberType.FLOAT, strategy=Strategy.GROUP, group_size=32, scale_dtype="e8m0")

PRESETS: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme(
            "w8a8-fp8",
            WeightQuant(8, NumberType.FLOAT, strategy=Strategy.CHANNEL),
            _FP8_TOKEN,
            description="FP8 E4M3 weights per output channel + dynamic per-token FP8 activations",
        ),
        Scheme(
            "w8a8-int8",
            WeightQuant(8, NumberType.INT, strategy=Strategy.CHANNEL),
            _INT8_TOKEN,
            description="INT8 symmetric weights per output channel + dynamic per-token INT8 activations",
        ),
        Scheme(
            "w4a16",
            WeightQuant(4, NumberType.INT, strategy=Strategy.GROUP, group_size=128),
            description="INT4 symmetric weights, group 128; 16-bit activations",
        ),
        Scheme(
            "w4a16-asym",
            WeightQuant(4, NumberType.INT, symmetric=False, strategy=Strategy.GROUP, group_size=128),
            description="INT4 asymmetric weights (integer zero point), group 128; 16-bit activations",
        ),
        Scheme(
            "w8a16",
            WeightQuant(8, NumberType.INT, strategy=Strategy.CHANNEL),
            description="INT8 symmetric weights per output channel; 16-bit activations",
        ),
        Scheme(
            "fp8-block",
            WeightQuant(8, NumberType.FLOAT, strategy=Strategy.BLOCK, block=(128, 128)),
            ActivationQuant(8, NumberType.FLOAT, strategy=Strategy.GROUP, group_size=128),
            description="FP8 weights in 128x128 blocks + dynamic FP8 activations per token-group of 128",
        ),
        # compressed-tensors 0.17.0's PRESET_SCHEMES, field for field (tests/test_formats_fp4.py)
        Scheme(
            "nvfp4",
            _NVFP4_W,
            ActivationQuant(4, NumberType.FLOAT, strategy=Strategy.TENSOR_GROUP, dynamic="local", group_size=16,
                            scale_dtype="float8_e4m3fn"),
            description="NVFP4: FP4 E2M1 weights and activations in groups of 16, FP8 E4M3 group scales, "
                        "FP32 global scales (activations: dynamic group scales, calibrated global)",
        ),
        Scheme("nvfp4a16", _NVFP4_W,
               description="NVFP4 weights (FP4 E2M1, group 16, FP8 scales, FP32 global scale); 16-bit activations"),
        Scheme(
            "mxfp4",
            _MXFP4_W,
            ActivationQuant(4, NumberType.FLOAT, strategy=Strategy.GROUP, group_size=32, scale_dtype="e8m0"),
            description="MXFP4: FP4 E2M1 weights and dynamic activations in groups of 32, E8M0 scales",
        ),
        Scheme("mxfp4a16", _MXFP4_W, description="MXFP4 weights (FP4 E2M1, group 32, E8M0 scales); 16-bit activations"),
        Scheme(
            "mxfp8",
            WeightQuant(8, NumberType.FLOAT, strategy=Strategy.GROUP, group_size=32, scale_dtype="e8m0"),
            ActivationQuant(8, NumberType.FLOAT, strategy=Strategy.GROUP, group_size=32, scale_dtype="e8m0"),
            description="MXFP8: FP8 E4M3 weights and dynamic activations in groups of 32, E8M0 scales",
        ),
        Scheme(
            "w4a8-fp8",
            WeightQuant(4, NumberType.INT, strategy=Strategy.GROUP, group_size=128),
            _FP8_TOKEN,
            description="INT4 symmetric weights, group 128 + dynamic per-token FP8 activations (W4AFP8)",
        ),
    )
}


def get_scheme(name: str, group_size: int | None = None) -> Scheme:
    """Look up a preset by name, optionally overriding its group size / block side."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise QuantstudyError(
            f"unknown scheme '{name}'; choose one of: {', '.join(PRESETS)}"
        )
    scheme = PRESETS[key]
    return scheme if group_size is None else scheme.with_group_size(group_size)


def stored_weight_bytes(weights: WeightQuant, out_features: int, in_features: int,
                        scale_bytes: float = 2.0) -> float:
    """Bytes one [out, in] weight takes in a format: values at `num_bits` each, plus one scale
    (`scale_bytes`, bf16 in our checkpoints; 1 byte where the format fixes FP8 or E8M0 scales)
    and, if asymmetric, one packed zero point per scale group, plus NVFP4's FP32 global scale.
    The one formula behind every size quantstudy prints or prices."""
    from math import ceil

    n, k = out_features, in_features
    scales = {Strategy.TENSOR: 1, Strategy.CHANNEL: n,
              Strategy.GROUP: n * ceil(k / (weights.group_size or k)),
              Strategy.TENSOR_GROUP: n * ceil(k / (weights.group_size or k)),
              Strategy.BLOCK: ceil(n / weights.block[0]) * ceil(k / weights.block[1]) if weights.block else 1,
              }[weights.strategy]
    zero_bytes = 0.0 if weights.symmetric else weights.num_bits / 8  # packed like the weights
    if weights.scale_dtype is not None:
        scale_bytes = 1.0   # FP8 E4M3 or E8M0: one byte per scale whatever the checkpoint dtype
    global_bytes = 4.0 if weights.strategy is Strategy.TENSOR_GROUP else 0.0
    return n * k * weights.num_bits / 8 + scales * (scale_bytes + zero_bytes) + global_bytes
