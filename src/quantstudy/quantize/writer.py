"""Writing compressed-tensors checkpoints: quantized linears -> a folder vLLM loads.

Writing is model-free: each quantized linear's local state dict (dequantized weight +
our scale / zero point) goes through compressed-tensors' own compressor for the
scheme's format (pack-quantized INT4/INT8, int-quantized INT8, float-quantized FP8),
so the tensors, names and `quantization_config` are exactly what vLLM and
transformers expect. Re-quantizing our dequantized weight with our own scale gives
back our integers exactly (w / s is an integer, or an FP8 value, by construction).

Beside the weights we keep `quantstudy.json`: scheme, algorithm, source, dtype and
per-layer SQNR -- the recipe, for the results store and `quantstudy info`. Reading (and
the scheme <-> compressed-tensors mapping both sides share) is `models.checkpoint`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from quantstudy import __version__
from quantstudy.errors import QuantstudyError
from quantstudy.models.checkpoint import RECIPE_FILE, ct_quantization_config, ct_scheme
from quantstudy.numerics import QuantizedWeight
from quantstudy.quantize.model import LayerReport
from quantstudy.schemes import NumberType, Scheme, Strategy

MAX_SHARD_BYTES = 5 * 2**30


def compress_layer(qw: QuantizedWeight, scheme: Scheme, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One linear's compressed state dict (local names), via compressed-tensors."""
    from compressed_tensors.compressors import BaseCompressor

    qs = ct_scheme(scheme)
    local = {"weight": qw.dequantize(torch.float32), "weight_scale": qw.scale}
    if qw.zero_point is not None:
        local["weight_zero_point"] = qw.zero_point
    if qw.g_idx is not None:
        local["weight_g_idx"] = qw.g_idx.to(torch.int32)
    out = BaseCompressor.get_value_from_registry(qs.format).compress(local, qs)
    if bias is not None:
        out["bias"] = bias
    return out


def _config_dict(model, scheme: Scheme, dtype: torch.dtype) -> dict:
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = str(dtype).removeprefix("torch.")
    config["quantization_config"] = ct_quantization_config(scheme)
    return config


def _shards(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    shards, current, size = [], {}, 0
    for key in sorted(tensors):
        t = tensors[key]
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > MAX_SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[key] = t
        size += nbytes
    shards.append(current)
    return shards


def save_checkpoint(
    model,
    tokenizer,
    qweights: dict[str, QuantizedWeight],
    scheme: Scheme,
    out_dir: str | Path,
    dtype: torch.dtype,
    recipe: dict,
    layer_reports: list[LayerReport] | None = None,
) -> Path:
    """Write a compressed-tensors checkpoint folder (atomically: all or nothing)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise QuantstudyError(f"{out_dir} exists and is not empty; choose another --out or remove it")
    tensors: dict[str, torch.Tensor] = {}
    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    skip = {f"{name}.{p}" for name in qweights for p in ("weight", "bias")}
    for key, value in state.items():
        if key in skip or (tied and key == "lm_head.weight"):
            continue
        tensors[key] = value.detach().to(dtype) if value.is_floating_point() else value.detach()
    modules = dict(model.named_modules())
    for name, qw in qweights.items():
        bias = modules[name].bias
        layer = compress_layer(qw, scheme, None if bias is None else bias.detach().to(dtype))
        tensors.update({f"{name}.{k}": v.contiguous() for k, v in layer.items()})

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        shards = _shards(tensors)
        if len(shards) == 1:
            save_file(shards[0], tmp / "model.safetensors", metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, tmp / fname, metadata={"format": "pt"})
                weight_map.update({k: fname for k in shard})
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(_config_dict(model, scheme, dtype), indent=2, sort_keys=True))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {
            "quantstudy_version": __version__,
            "scheme": {"name": scheme.name, "label": scheme.label, **asdict(scheme)},
            "dtype": str(dtype).removeprefix("torch."),
            **recipe,
            "layers": [asdict(r) for r in (layer_reports or [])],
        }
        (tmp / RECIPE_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        for f in tmp.iterdir():  # mkdtemp and safetensors create owner-only files
            f.chmod(0o644)
        tmp.chmod(0o755)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _json_default(obj):
    if isinstance(obj, (NumberType, Strategy)):
        return obj.value
    raise TypeError(type(obj).__name__)
