"""compressed-tensors checkpoints: write, read, describe.

Writing is model-free: each quantized linear's local state dict (dequantized weight +
our scale / zero point) goes through compressed-tensors' own compressor for the
scheme's format (pack-quantized INT4/INT8, int-quantized INT8, float-quantized FP8),
so the tensors, names and `quantization_config` are exactly what vLLM and
transformers expect. Re-quantizing our dequantized weight with our own scale gives
back our integers exactly (w / s is an integer, or an FP8 value, by construction).

Beside the weights we keep `quantstudy.json`: scheme, algorithm, source, dtype and
per-layer SQNR — the recipe, for the results store and `quantstudy info`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from quantstudy import __version__
from quantstudy.errors import QuantstudyError
from quantstudy.models.loading import check_safetensors_file, read_config
from quantstudy.quantize.model import LayerReport, install_fake_quant
from quantstudy.quantize.primitives import QuantizedWeight
from quantstudy.schemes import ActivationQuant, NumberType, Scheme, Strategy, WeightQuant

RECIPE_FILE = "quantstudy.json"
MAX_SHARD_BYTES = 5 * 2**30


# ---- scheme <-> compressed-tensors config -------------------------------------------

def _weight_args(w: WeightQuant):
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(
        num_bits=w.num_bits, type=w.type.value, symmetric=w.symmetric, strategy=w.strategy.value,
        group_size=w.group_size, block_structure=list(w.block) if w.block else None, dynamic=False,
    )


def _activation_args(a: ActivationQuant):
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(
        num_bits=a.num_bits, type=a.type.value, symmetric=a.symmetric, strategy=a.strategy.value,
        group_size=a.group_size, dynamic=True,
    )


def ct_scheme(scheme: Scheme):
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationScheme

    qs = QuantizationScheme(
        targets=["Linear"],
        weights=_weight_args(scheme.weights),
        input_activations=None if scheme.activations is None else _activation_args(scheme.activations),
    )
    qs.format = infer_module_format(torch.nn.Linear, qs)
    return qs


def ct_quantization_config(scheme: Scheme) -> dict:
    """The `quantization_config` block of config.json for this scheme."""
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationConfig

    qs = ct_scheme(scheme)
    config = QuantizationConfig(
        config_groups={"group_0": qs}, ignore=list(scheme.ignore),
        quantization_status="compressed", format=qs.format,
    )
    data = config.model_dump(exclude=["quant_method"])
    return {"quant_method": "compressed-tensors", "version": compressed_tensors.__version__,
            "sparsity_config": {}, "transform_config": {}, **data}


def scheme_from_ct_config(qconfig: dict, name: str = "custom") -> Scheme:
    """Our Scheme from a checkpoint's quantization_config (single config group)."""
    groups = qconfig.get("config_groups") or {}
    if len(groups) != 1:
        raise QuantstudyError(f"checkpoint has {len(groups)} quantization groups; quantstudy reads exactly one")
    group = next(iter(groups.values()))
    w = group.get("weights") or {}
    a = group.get("input_activations")
    weights = WeightQuant(
        num_bits=w["num_bits"], type=NumberType(w.get("type", "int")), symmetric=w.get("symmetric", True),
        strategy=Strategy(w.get("strategy", "tensor")), group_size=w.get("group_size"),
        block=tuple(w["block_structure"]) if w.get("block_structure") else None,
    )
    acts = None
    if a:
        acts = ActivationQuant(num_bits=a["num_bits"], type=NumberType(a.get("type", "int")),
                               symmetric=a.get("symmetric", True), strategy=Strategy(a.get("strategy", "token")),
                               dynamic=bool(a.get("dynamic", True)), group_size=a.get("group_size"))
    return Scheme(name, weights, acts, ignore=tuple(qconfig.get("ignore") or ()))


# ---- writing ----------------------------------------------------------------------

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


# ---- reading ----------------------------------------------------------------------

@dataclass
class CheckpointInfo:
    path: Path
    scheme: Scheme
    format: str
    quantized_layers: list[str]
    tensor_bytes: int
    disk_bytes: int
    recipe: dict
    config: dict


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise QuantstudyError(f"{folder} holds no *.safetensors weights")
    for f in files:
        check_safetensors_file(f)
    return files


def read_checkpoint_info(folder: str | Path) -> CheckpointInfo:
    folder = Path(folder)
    if not folder.is_dir():
        raise QuantstudyError(f"checkpoint folder '{folder}' not found")
    config = read_config(folder)
    qconfig = config.get("quantization_config")
    if not qconfig or qconfig.get("quant_method") != "compressed-tensors":
        raise QuantstudyError(f"{folder} is not a compressed-tensors checkpoint (no such quantization_config)")
    recipe_path = folder / RECIPE_FILE
    recipe = json.loads(recipe_path.read_text()) if recipe_path.is_file() else {}
    scheme = scheme_from_ct_config(qconfig, name=recipe.get("scheme", {}).get("name", "custom"))
    layers, nbytes = set(), 0
    for f in _weight_files(folder):
        with safe_open(f, framework="pt") as fh:
            for key in fh.keys():
                sl = fh.get_slice(key)
                shape = sl.get_shape()
                numel = 1
                for d in shape:
                    numel *= d
                nbytes += numel * _DTYPE_BYTES.get(sl.get_dtype(), 4)
                if key.endswith((".weight_packed", ".weight_scale")):
                    layers.add(key.rsplit(".", 1)[0])
    disk = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return CheckpointInfo(folder, scheme, str(qconfig.get("format")), sorted(layers), nbytes, disk, recipe, config)


_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for f in _weight_files(folder):
        with safe_open(f, framework="pt") as fh:
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    return tensors


def load_dequantized_weights(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Scheme]:
    """(dequantized weights of quantized layers, all other tensors, scheme), decompressed
    by compressed-tensors itself — the reader an engine-independent check should use."""
    from compressed_tensors.compressors import BaseCompressor

    info = read_checkpoint_info(folder)
    qs = ct_scheme(info.scheme)
    qs.format = info.format if info.format not in ("None", "mixed-precision") else qs.format
    compressor = BaseCompressor.get_value_from_registry(qs.format)
    state = read_state_dict(Path(folder))
    local: dict[str, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module in info.quantized_layers and leaf != "bias":
            local.setdefault(module, {})[leaf] = value
        else:
            rest[key] = value
    # Scales go to float32 first so dequantization is exact (as transformers does when
    # loading in float32); callers round once to their compute dtype.
    weights = {
        name: compressor.decompress({k: v.float() if v.is_floating_point() and k != "weight" else v
                                     for k, v in sd.items()}, qs)["weight"].float()
        for name, sd in local.items()
    }
    return weights, rest, info.scheme


def load_fake_quant_model(folder: str | Path, dtype: torch.dtype = torch.float32):
    """Build the quantized model from a checkpoint for PyTorch evaluation on CPU:
    weights dequantized by compressed-tensors, activations quantized on the fly."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    weights, rest, scheme = load_dequantized_weights(folder)
    config_dict = read_config(folder)
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v
                                                 for k, v in rest.items()}, strict=False)
    expected_missing = {f"{n}.weight" for n in weights}
    if getattr(config, "tie_word_embeddings", False):
        expected_missing.add("lm_head.weight")
    if unexpected or set(missing) - expected_missing:
        raise QuantstudyError(f"{folder}: tensors do not match the model ({sorted(set(missing) - expected_missing)[:3]}"
                              f" missing, {unexpected[:3]} unexpected)")
    model.tie_weights()
    install_fake_quant(model, weights, scheme.activations)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return model, tokenizer, scheme
