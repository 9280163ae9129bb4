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


@dataclass(frozen=True)
class WeightQuant:
    """How a linear layer's weight [out_features, in_features] is quantized."""

    num_bits: int
    type: NumberType = NumberType.INT
    symmetric: bool = True
    strategy: Strategy = Strategy.CHANNEL
    group_size: int | None = None  # GROUP: contiguous input columns sharing a scale
    block: tuple[int, int] | None = None  # BLOCK: (rows, cols) sharing a scale

    def __post_init__(self) -> None:
        if self.type is NumberType.FLOAT and (self.num_bits != 8 or not self.symmetric):
            raise QuantstudyError("float weights must be 8-bit symmetric (FP8 E4M3)")
        if self.type is NumberType.INT and not 2 <= self.num_bits <= 8:
            raise QuantstudyError(f"integer weights need 2..8 bits, got {self.num_bits}")
        if self.strategy is Strategy.GROUP and (self.group_size or 0) <= 0:
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
    dynamic: bool = True  # scales computed on the fly from each token
    group_size: int | None = None  # GROUP: per token, per group of input columns

    def __post_init__(self) -> None:
        if not self.dynamic:
            raise QuantstudyError("only dynamic activation quantization is supported")
        if self.strategy not in (Strategy.TOKEN, Strategy.GROUP):
            raise QuantstudyError("dynamic activations are quantized per token or per group")
        if self.strategy is Strategy.GROUP and (self.group_size or 0) <= 0:
            raise QuantstudyError("per-group activations need a positive group size")


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

    @property
    def label(self) -> str:
        """Paper-style label: W8A8-FP8, W8A8-INT8, W4A16, ..."""
        w, a = self.weights, self.activations
        if a is None:
            return f"W{w.num_bits}A16" + ("-FP8" if w.type is NumberType.FLOAT else "")
        kind = "FP8" if w.type is NumberType.FLOAT else f"INT{w.num_bits}"
        return f"W{w.num_bits}A{a.num_bits}-{kind}"

    @property
    def granularity(self) -> int | tuple[int, int] | None:
        """The group size or block shape that has to divide layer widths, if any."""
        if self.weights.strategy is Strategy.GROUP:
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
        if w.strategy is Strategy.GROUP:
            weights = dataclasses.replace(w, group_size=size)
        elif w.strategy is Strategy.BLOCK:
            weights = dataclasses.replace(w, block=(size, size))
        else:
            raise QuantstudyError(
                f"scheme {self.name} has {w.strategy.value}-wise weights: --group-size does not apply"
            )
        acts = self.activations
        if acts is not None and acts.strategy is Strategy.GROUP:
            acts = dataclasses.replace(acts, group_size=size)
        return dataclasses.replace(self, weights=weights, activations=acts)

    def with_ignore(self, ignore: tuple[str, ...]) -> "Scheme":
        return dataclasses.replace(self, ignore=tuple(ignore))


_INT8_TOKEN = ActivationQuant(num_bits=8, type=NumberType.INT)
_FP8_TOKEN = ActivationQuant(num_bits=8, type=NumberType.FLOAT)

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
    (`scale_bytes`, bf16 in our checkpoints) and, if asymmetric, one packed zero point per
    scale group. The one formula behind every size quantstudy prints or prices."""
    from math import ceil

    n, k = out_features, in_features
    scales = {Strategy.TENSOR: 1, Strategy.CHANNEL: n,
              Strategy.GROUP: n * ceil(k / (weights.group_size or k)),
              Strategy.BLOCK: ceil(n / weights.block[0]) * ceil(k / weights.block[1]) if weights.block else 1,
              }[weights.strategy]
    zero_bytes = 0.0 if weights.symmetric else weights.num_bits / 8  # packed like the weights
    return n * k * weights.num_bits / 8 + scales * (scale_bytes + zero_bytes)
