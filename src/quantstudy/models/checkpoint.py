"""compressed-tensors checkpoints as a format: which scheme a folder holds, and its weights.

The mapping between our `Scheme` and compressed-tensors' `QuantizationScheme` /
`quantization_config` (both directions), and model-free reading: `read_checkpoint_info`
describes a folder (scheme, format, quantized layers, bytes, the recipe in
`quantstudy.json`); `load_dequantized_weights` decompresses it with compressed-tensors'
own compressors -- the reader an engine-independent check should use. Writing lives in
the quantize stage (`quantize.writer`), which uses the same mapping, so what we write is
what we read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from quantstudy.errors import QuantstudyError
from quantstudy.models.references import check_safetensors_file, read_config
from quantstudy.schemes import ActivationQuant, NumberType, Scheme, Strategy, WeightQuant

RECIPE_FILE = "quantstudy.json"


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
