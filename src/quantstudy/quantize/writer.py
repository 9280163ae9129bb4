"""Writing compressed-tensors checkpoints: quantized linears -> a folder vLLM loads.

Writing is model-free: each quantized linear's local state dict (dequantized weight +
our scale / zero point) goes through compressed-tensors' own compressor for the
scheme's format (pack-quantized INT4/INT8, int-quantized INT8, float-quantized FP8),
so the tensors, names and `quantization_config` are exactly what vLLM and
transformers expect. Re-quantizing our dequantized weight with our own scale gives
back our integers exactly (w / s is an integer, or an FP8 value, by construction).

`CheckpointOutput` takes tensors as they are produced (the streaming quantizer writes a
layer and forgets it) into safetensors shards of at most `max_shard_bytes`
(`shard_writer`), all inside a temporary folder beside `out_dir` that is renamed into place
only when everything is written: a killed run leaves nothing half-written.

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

from quantstudy import __version__
from quantstudy.errors import QuantstudyError
from quantstudy.models.checkpoint import RECIPE_FILE, ct_quantization_config, ct_scheme
from quantstudy.numerics import QuantizedWeight
from quantstudy.numerics_fp import E8M0_DTYPE, e8m0_value, is_microscaled
from quantstudy.quantize.model import LayerReport
from quantstudy.quantize.shard_writer import MAX_SHARD_BYTES, ShardWriter
from quantstudy.schemes import NumberType, Scheme, Strategy


def compress_layer(qw: QuantizedWeight, scheme: Scheme, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One linear's compressed state dict (local names), via compressed-tensors."""
    from compressed_tensors.compressors import BaseCompressor

    qs = ct_scheme(scheme)
    local = {"weight": qw.dequantize(torch.float32), "weight_scale": qw.scale}
    if is_microscaled(qw.args):
        local.update(microscaled_params(qw, scheme))
    if qw.zero_point is not None:
        local["weight_zero_point"] = qw.zero_point
    if qw.g_idx is not None:
        local["weight_g_idx"] = qw.g_idx.to(torch.int32)
    out = BaseCompressor.get_value_from_registry(qs.format).compress(local, qs)
    if bias is not None:
        out["bias"] = bias
    return out


def microscaled_params(qw: QuantizedWeight, scheme: Scheme) -> dict[str, torch.Tensor]:
    """The MX / NVFP4 compressors' inputs: float32 value of each stored scale (they quantize
    with it, then store it as FP8 or as an E8M0 exponent byte), NVFP4's global scale and, for
    W4A4, the calibrated input global scale vLLM and transformers read."""
    out = {"weight_scale": e8m0_value(qw.scale) if qw.scale.dtype == E8M0_DTYPE else qw.scale.float()}
    if qw.global_scale is not None:
        out["weight_global_scale"] = qw.global_scale.float().reshape(1)
    if scheme.static_input_scales:
        if qw.input_global_scale is None:
            raise QuantstudyError(f"{scheme.name}: NVFP4 activations need a calibrated input global scale per "
                                  "linear (quantize.fp4.calibrate_input_global_scales); none was given")
        out["input_global_scale"] = qw.input_global_scale.float().reshape(1)
    return out


def config_dict(config, scheme: Scheme, dtype: torch.dtype) -> dict:
    """The source model's config.json with the checkpoint's dtype and quantization_config."""
    out = config.to_dict()
    out.pop("quantization_config", None)
    out["dtype"] = str(dtype).removeprefix("torch.")
    out["quantization_config"] = ct_quantization_config(scheme)
    return out


def _json_default(obj):
    if isinstance(obj, (NumberType, Strategy)):
        return obj.value
    raise TypeError(type(obj).__name__)


def check_output(out_dir: Path) -> None:
    """A checkpoint goes into a new or empty folder, never over anything."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        what = "is a file" if not out_dir.is_dir() else "is not empty"
        raise QuantstudyError(f"{out_dir} exists and {what}; choose another --out or remove it")


def check_free_space(out_dir: Path, needed: int) -> None:
    """Refuse before any work when the checkpoint (`needed` bytes, estimated) cannot fit: a full
    disk found after an hour of calibration is an hour lost. 5% and 64 MiB of slack for the
    tokenizer, configs and the estimate's error."""
    parent = next((p for p in (out_dir, *out_dir.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise QuantstudyError(f"cannot write {out_dir}: {parent} is a file, not a folder")
    free = shutil.disk_usage(parent).free
    want = int(needed * 1.05) + (64 << 20)
    if free < want:
        raise QuantstudyError(f"not enough space for the checkpoint in {parent}: it needs about "
                              f"{want / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free")


class CheckpointOutput:
    """A checkpoint being written: tensors in, one folder out, or nothing."""

    def __init__(self, out_dir: str | Path, scheme: Scheme, dtype: torch.dtype, max_shard_bytes: int | None = None,
                 expected_bytes: int | None = None):
        self.out_dir, self.scheme, self.dtype = Path(out_dir), scheme, dtype
        check_output(self.out_dir)
        if expected_bytes is not None:
            check_free_space(self.out_dir, expected_bytes)
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QuantstudyError(f"cannot create {self.out_dir.parent}: {exc.strerror or exc}") from None
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=self.out_dir.parent))
        self.shards = ShardWriter(self.tmp, max_shard_bytes or MAX_SHARD_BYTES)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """An unquantized tensor, stored in the checkpoint's dtype (integers as they are)."""
        self.shards.add(name, tensor.detach().to(self.dtype) if tensor.is_floating_point() else tensor.detach())

    def add_linear(self, name: str, qw: QuantizedWeight, module: torch.nn.Module | None = None,
                   bias: torch.Tensor | None = None) -> None:
        """A quantized linear, compressed; its bias (from `module`, or given) in the checkpoint's dtype."""
        if module is not None and module.bias is not None:
            bias = module.bias.data
        cpu = QuantizedWeight(qw.q.cpu(), qw.scale.cpu(), None if qw.zero_point is None else qw.zero_point.cpu(),
                              qw.args, None if qw.g_idx is None else qw.g_idx.cpu(),
                              *(None if t is None else t.cpu() for t in (qw.global_scale, qw.input_global_scale)))
        layer = compress_layer(cpu, self.scheme, None if bias is None else bias.detach().cpu().to(self.dtype))
        for k, v in layer.items():
            self.shards.add(f"{name}.{k}", v.contiguous())

    def finish(self, config, generation_config, tokenizer, recipe: dict, layer_reports: list[LayerReport]) -> Path:
        """Write the shards' index, config, generation config, tokenizer and quantstudy.json,
        then rename the folder into place."""
        self.shards.finish()
        tmp = self.tmp
        (tmp / "config.json").write_text(json.dumps(config_dict(config, self.scheme, self.dtype), indent=2,
                                                    sort_keys=True))
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {
            "quantstudy_version": __version__,
            "scheme": {"name": self.scheme.name, "label": self.scheme.label, **asdict(self.scheme)},
            "dtype": str(self.dtype).removeprefix("torch."),
            **recipe,
            "layers": [asdict(r) for r in layer_reports],
        }
        (tmp / RECIPE_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        for f in tmp.iterdir():  # mkdtemp creates owner-only files
            f.chmod(0o644)
        tmp.chmod(0o755)
        if self.out_dir.exists():
            self.out_dir.rmdir()
        os.replace(tmp, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        self.shards.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self.abort()


def save_checkpoint(
    model,
    tokenizer,
    qweights: dict[str, QuantizedWeight],
    scheme: Scheme,
    out_dir: str | Path,
    dtype: torch.dtype,
    recipe: dict,
    layer_reports: list[LayerReport] | None = None,
    max_shard_bytes: int | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a model in memory with its quantized linears as a checkpoint (atomically);
    `extra`: tensors the model does not hold (an FP8 KV cache's k_scale / v_scale)."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    skip = {f"{name}.{p}" for name in qweights for p in ("weight", "bias")}
    modules = dict(model.named_modules())
    with CheckpointOutput(out_dir, scheme, dtype, max_shard_bytes) as out:
        for key, value in model.state_dict().items():
            if key not in skip and not (tied and key == "lm_head.weight"):
                out.add(key, value)
        for name, qw in qweights.items():
            out.add_linear(name, qw, modules[name])
        for name, tensor in (extra or {}).items():
            out.add(name, tensor)
        out.finish(model.config, getattr(model, "generation_config", None), tokenizer, recipe, layer_reports or [])
    return Path(out_dir)
