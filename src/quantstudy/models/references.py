"""Resolve a model reference to a validated local folder, safely (loading is `inference`'s).

A reference is an embedded name (`smollm2-135m`), a Hugging Face folder, or a `.gguf`
file. Folders must hold safetensors: pickled `.bin` weights can run arbitrary code on
load, so they are refused unless the user passes `allow_pickle`. Every problem with the
input is a one-line `QuantstudyError`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from quantstudy.errors import QuantstudyError
from quantstudy.models.embedded import EMBEDDED_MODELS, ensure_embedded, ensure_gguf_converted

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def torch_dtype(name: str):
    import torch

    key = DTYPES.get(str(name).lower())
    if key is None:
        raise QuantstudyError(f"unknown dtype '{name}'; choose one of: float32, bfloat16, float16")
    return getattr(torch, key)


def resolve_model(ref: str | Path, allow_pickle: bool = False) -> Path:
    """Turn a model reference into a validated local HF folder (converting GGUF once)."""
    text = str(ref)
    if text in EMBEDDED_MODELS:
        return ensure_embedded(text)
    path = Path(text).expanduser()
    if not path.exists():
        known = ", ".join(EMBEDDED_MODELS)
        raise QuantstudyError(f"model '{text}' not found: not a folder, a .gguf file, or an embedded model ({known})")
    if path.is_file():
        if path.suffix != ".gguf":
            raise QuantstudyError(f"{path} is a file but not a .gguf; pass a model folder or a .gguf file")
        return ensure_gguf_converted(path)
    validate_hf_folder(path, allow_pickle=allow_pickle)
    return path


def read_config(folder: Path) -> dict:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise QuantstudyError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise QuantstudyError(f"{cfg_path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not config.get("architectures"):
        raise QuantstudyError(
            f"{cfg_path} names no 'architectures': cannot tell which causal LM class to build"
        )
    if not config.get("model_type"):
        raise QuantstudyError(f"{cfg_path} has no 'model_type'")
    return config


def check_safetensors_file(path: Path) -> dict:
    """Parse a safetensors header and check the file holds every byte it declares."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                raise ValueError
            header = json.loads(fh.read(header_len))
    except (struct.error, ValueError, UnicodeDecodeError):
        raise QuantstudyError(f"{path} is not a readable safetensors file (corrupt or truncated header)") from None
    data_len = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + data_len > size:
        raise QuantstudyError(
            f"{path} is truncated: header declares {8 + header_len + data_len} bytes, file has {size}"
        )
    return header


def validate_hf_folder(folder: Path, allow_pickle: bool = False) -> dict:
    config = read_config(folder)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        pickles = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt"))
        if pickles and not allow_pickle:
            raise QuantstudyError(
                f"{folder} holds only pickle weights ({pickles[0].name}); pickles can run code on load — "
                "convert to safetensors or pass --allow-pickle if you trust the source"
            )
        if not pickles:
            raise QuantstudyError(f"{folder} holds no weights (*.safetensors)")
    for shard in shards:
        check_safetensors_file(shard)
    return config
