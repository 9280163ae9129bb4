"""A recipe: which algorithm chooses the quantized values, its knobs, and the transforms before it.

`Recipe` is the user's record (CLI flags, a study variant, `quantstudy.json`): one flat set
of knobs, stored as given. Each algorithm is registered under its name with a config class
of the knobs it reads and a handler that quantizes one decoder layer (torchao's
`quantize_(model, config)` + registered handler, made layer-wise): `register` adds one, so
a new algorithm (AutoRound, a rotation-aware GPTQ) is one new file in `algorithms/`, found
there by name. Nothing dispatches on algorithm names with if/elif.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, fields

from quantstudy.errors import QuantstudyError
from quantstudy.numerics import QuantizedWeight
from quantstudy.schemes import Scheme


class Algorithm:
    """Base of a registered algorithm: subclasses set `name`, `config` (a frozen dataclass
    whose fields are Recipe knobs it reads) and implement `quantize_layer`."""

    name: str = ""
    config: type = object
    needs_calibration: bool = True      # needs activations (a forward pass) to choose values
    needs_mappings: bool = False        # needs the family's norm/linear mappings (AWQ)
    one_pass: bool = False              # implements quantize_group: one forward per layer (one_pass.py)

    def check(self, scheme: Scheme) -> None:
        """Refuse a scheme the algorithm cannot produce (before any work)."""

    def quantize_layer(self, work, config) -> dict[str, QuantizedWeight]:
        """Quantized values of `work.linears` (a `layerwise.LayerWork`); may change the layer's
        float weights (scales folded in), never its function."""
        raise NotImplementedError

    def quantize_group(self, work, names: list[str], hessian, config) -> dict[str, QuantizedWeight]:
        """Quantized values of linears `names`, which all read one input whose 2/N X^T X over
        every calibration token is `hessian`; only for algorithms with `one_pass` set."""
        raise NotImplementedError


_REGISTRY: dict[str, Algorithm] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make an algorithm available under `cls.name`."""
    _REGISTRY[cls.name] = cls()
    return cls


def algorithms() -> dict[str, Algorithm]:
    """Every registered algorithm (the modules under quantize/algorithms/ register on import)."""
    if not _REGISTRY:
        from quantstudy.quantize import algorithms as package

        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
    return _REGISTRY


def get_algorithm(name: str) -> Algorithm:
    known = algorithms()
    if name not in known:
        raise QuantstudyError(f"unknown algorithm '{name}'; choose one of: {', '.join(known)}")
    return known[name]


@dataclass(frozen=True)
class Recipe:
    """How quantized values are chosen: algorithm and its knobs (saved with the checkpoint)."""

    algorithm: str = "rtn"  # a registered algorithm: rtn | gptq | awq
    smoothquant: float | None = None  # SmoothQuant strength, e.g. 0.8; None = off
    dampening: float = 0.01
    actorder: bool = True
    mse_clip: bool = True
    block_size: int = 128
    # One forward per decoder layer, each linear calibrated on the quantized linears before it
    # in the layer (quantize/one_pass.py), where the algorithm can and the activations fit;
    # False: llm-compressor's two forwards (the float layer for statistics, then the quantized one).
    true_sequential: bool = True

    def __post_init__(self) -> None:
        get_algorithm(self.algorithm)
        if self.smoothquant is not None and not 0.0 <= self.smoothquant <= 1.0:
            raise QuantstudyError(f"--smoothquant strength must be in [0, 1], got {self.smoothquant}")
        if not 0.0 < self.dampening < 1.0:
            raise QuantstudyError(f"GPTQ dampening must be in (0, 1), got {self.dampening}")

    @property
    def handler(self) -> Algorithm:
        return get_algorithm(self.algorithm)

    def algorithm_config(self):
        """The registered algorithm's config, built from the knobs it reads."""
        cls = self.handler.config
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})

    def check(self, scheme: Scheme) -> None:
        self.handler.check(scheme)

    @property
    def needs_calibration(self) -> bool:
        return self.handler.needs_calibration or self.smoothquant is not None

    @property
    def needs_mappings(self) -> bool:
        """Whether the model's family must be known (SmoothQuant, AWQ)."""
        return self.handler.needs_mappings or self.smoothquant is not None
