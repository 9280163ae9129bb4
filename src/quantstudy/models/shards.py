"""A model's weights on disk, one tensor at a time: which shard holds a tensor, and reading it.

The streaming quantizer never loads a state dict: it asks for the tensors of one decoder
layer when that layer's turn comes, so only what is being worked on is ever in memory. A
tensor is read with one positioned read at the offsets its shard's header gives -- not
through a memory map, whose touched pages would stay mapped (and counted in the process's
resident memory) for as long as the shard is open. The index is built from every shard's safetensors header
(each checked complete first), so a folder with or without `model.safetensors.index.json`
reads the same; a tensor named in two shards is an error, not a silent pick.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch

from quantstudy.errors import QuantstudyError
from quantstudy.models.references import check_safetensors_file

DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "BOOL": torch.bool}


class ShardIndex:
    """name -> (shard, dtype, shape) for every tensor of a folder's safetensors files."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise QuantstudyError(f"{self.folder} holds no *.safetensors weights")
        self.entries: dict[str, tuple[Path, str, tuple[int, ...]]] = {}
        self._offsets: dict[str, tuple[int, int]] = {}   # absolute byte range in its shard
        for f in files:
            header = check_safetensors_file(f)
            with f.open("rb") as fh:
                data_start = 8 + int.from_bytes(fh.read(8), "little")
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                if name in self.entries:
                    raise QuantstudyError(f"{self.folder}: tensor {name} is in both {self.entries[name][0].name} "
                                          f"and {f.name}")
                if meta["dtype"] not in TORCH_DTYPES:
                    raise QuantstudyError(f"{f}: tensor {name} has dtype {meta['dtype']}, which quantstudy cannot read")
                self.entries[name] = (f, meta["dtype"], tuple(meta["shape"]))
                begin, end = meta["data_offsets"]
                self._offsets[name] = (data_start + begin, data_start + end)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][2]

    def nbytes(self, name: str) -> int:
        _, dtype, shape = self.entries[name]
        return math.prod(shape) * DTYPE_BYTES.get(dtype, 4)

    def get(self, name: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """One tensor, read from its shard into memory of its own."""
        if name not in self.entries:
            raise QuantstudyError(f"{self.folder}: the model's config expects tensor {name}, which no shard holds")
        path, dtype_name, shape = self.entries[name]
        begin, end = self._offsets[name]
        buf = bytearray(end - begin)
        with path.open("rb") as fh:
            fh.seek(begin)
            if fh.readinto(buf) != len(buf):
                raise QuantstudyError(f"{path}: tensor {name} is cut short")
        t = torch.frombuffer(buf, dtype=TORCH_DTYPES[dtype_name]) if buf else torch.empty(0, dtype=TORCH_DTYPES[dtype_name])
        t = t.reshape(shape)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            # caught where the tensor is read, before any work uses it: a NaN weight would
            # otherwise surface as a downstream symptom (a "not positive definite" Hessian) or
            # be written into a checkpoint with a NaN SQNR
            bad = int((~torch.isfinite(t)).sum())
            raise QuantstudyError(f"{path}: tensor {name} holds {bad} NaN or infinite value(s) of {t.numel()}; "
                                  "quantstudy does not quantize a model with non-finite weights")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.to(device) if str(device) != "cpu" else t

    def check_matches(self, model: torch.nn.Module, tied: bool) -> None:
        """Every parameter the model's config builds is in the shards with the config's shape
        (read from the headers, before any work): a config.json and weights that disagree are
        refused here instead of being quantized into a checkpoint no engine can load."""
        for name, param in model.named_parameters():
            if name not in self.entries:
                if tied and name == "lm_head.weight":
                    continue
                raise QuantstudyError(f"{self.folder}: the model's config expects tensor {name} "
                                      f"{list(param.shape)}, which no shard holds")
            if self.shape(name) != tuple(param.shape):
                raise QuantstudyError(f"{self.folder}: tensor {name} has shape {list(self.shape(name))} but "
                                      f"config.json implies {list(param.shape)}; the config and the weights disagree")

    def with_prefix(self, prefix: str) -> list[str]:
        return [n for n in self.entries if n.startswith(prefix)]

    def close(self) -> None:
        """Nothing stays open between reads; kept for symmetry with the writer."""


def total_bytes(index: ShardIndex, names: Iterable[str] | None = None) -> int:
    return sum(index.nbytes(n) for n in (index.names() if names is None else names))


def check_weights_match_config(folder: str | Path) -> None:
    """A float model folder's tensors against the shapes its config.json builds (headers only,
    a model on the meta device): a disagreement is one line naming the tensor, where transformers
    would raise after logging a report. Quantized checkpoints (other tensor names) are left to
    their own reader."""
    import json

    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return   # transformers says what is wrong with the config itself
    if "quantization_config" in raw or not any(folder.glob("*.safetensors")):
        return
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (OSError, ValueError, KeyError):
        return
    ShardIndex(folder).check_matches(model, bool(getattr(config, "tie_word_embeddings", False)))

