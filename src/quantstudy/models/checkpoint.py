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
from quantstudy.schemes import ActivationQuant, KVCacheQuant, NumberType, Scheme, Strategy, WeightQuant

RECIPE_FILE = "quantstudy.json"


# ---- scheme <-> compressed-tensors config -------------------------------------------

def _weight_args(w: WeightQuant):
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(
        num_bits=w.num_bits, type=w.type.value, symmetric=w.symmetric, strategy=w.strategy.value,
        group_size=w.group_size, block_structure=list(w.block) if w.block else None, dynamic=False,
        **_ct_scale_dtypes(w.scale_dtype),
    )


def _ct_scale_dtypes(scale_dtype: str | None) -> dict:
    """MX / NV scale (and, as the library's presets set them, zero-point) dtypes."""
    if scale_dtype is None:
        return {}
    dtype = torch.uint8 if scale_dtype == "e8m0" else torch.float8_e4m3fn
    return {"scale_dtype": dtype, "zp_dtype": dtype}


def _activation_args(a: ActivationQuant):
    from compressed_tensors.quantization import QuantizationArgs

    local = a.dynamic == "local"   # NVFP4: its static global input scale has a calibration observer
    return QuantizationArgs(
        num_bits=a.num_bits, type=a.type.value, symmetric=a.symmetric, strategy=a.strategy.value,
        group_size=a.group_size, dynamic="local" if local else True,
        **({"observer": "static_minmax"} if local else {}), **_ct_scale_dtypes(a.scale_dtype),
    )


def ct_kv_cache_args(kv: KVCacheQuant):
    """compressed-tensors' `kv_cache_scheme`: static symmetric FP8, per tensor or per KV head
    (what vLLM's CompressedTensorsKVCacheMethod validates)."""
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(num_bits=kv.num_bits, type=kv.type.value, symmetric=True, dynamic=False,
                            strategy="attn_head" if kv.per_head else "tensor")


def ct_scheme(scheme: Scheme):
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationScheme

    qs = QuantizationScheme(
        targets=["Linear"],
        weights=_weight_args(scheme.weights),
        input_activations=None if scheme.activations is None else _activation_args(scheme.activations),
    )
    qs.format = infer_module_format(torch.nn.Linear, qs)
    if scheme.activations is not None and scheme.weights.type is NumberType.INT and scheme.weights.num_bits == 4:
        # W4A8 (W4AFP8): the library infers int-quantized (INT4 held in int8) for any weight with
        # activations, but vLLM's W4A8 kernels declare `weight_packed` (pack-quantized), as
        # llm-compressor writes them
        from compressed_tensors.config import CompressionFormat

        qs.format = CompressionFormat.pack_quantized
    return qs


def ct_quantization_config(scheme: Scheme) -> dict:
    """The `quantization_config` block of config.json for this scheme."""
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationConfig

    qs = ct_scheme(scheme)
    config = QuantizationConfig(
        config_groups={"group_0": qs}, ignore=list(scheme.ignore),
        quantization_status="compressed", format=qs.format,
        kv_cache_scheme=None if scheme.kv_cache is None else ct_kv_cache_args(scheme.kv_cache),
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
        scale_dtype=_scale_dtype_of(w),
    )
    acts = None
    if a:
        acts = ActivationQuant(num_bits=a["num_bits"], type=NumberType(a.get("type", "int")),
                               symmetric=a.get("symmetric", True), strategy=Strategy(a.get("strategy", "token")),
                               dynamic="local" if a.get("dynamic") == "local" else bool(a.get("dynamic", True)),
                               group_size=a.get("group_size"), scale_dtype=_scale_dtype_of(a))
    kv = qconfig.get("kv_cache_scheme")
    if kv and (kv.get("type") != "float" or kv.get("num_bits") != 8):
        raise QuantstudyError(f"kv_cache_scheme {kv.get('type')}{kv.get('num_bits')}: quantstudy reads FP8 only")
    kv_cache = KVCacheQuant(per_head=kv.get("strategy") == "attn_head") if kv else None
    return Scheme(name, weights, acts, ignore=tuple(qconfig.get("ignore") or ()), kv_cache=kv_cache)


def _scale_dtype_of(args: dict) -> str | None:
    """Our scale_dtype from a config's `scale_dtype` ("torch.uint8" -> E8M0, FP8 -> FP8)."""
    s = str(args.get("scale_dtype") or "")
    return "e8m0" if s.endswith("uint8") else "float8_e4m3fn" if s.endswith("float8_e4m3fn") else None


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
        # NVFP4's input global scale is the activations' (fake-quant reads it from `rest`)
        if module in info.quantized_layers and leaf not in ("bias", "input_global_scale"):
            local.setdefault(module, {})[leaf] = value
        else:
            rest[key] = value
    # Scales go to float32 first so dequantization is exact (as transformers does when
    # loading in float32); callers round once to their compute dtype.
    weights = {
        name: compressor.decompress({k: v.float() if v.is_floating_point() and k != "weight" else v
                                     for k, v in sd.items()}, qs)["weight"].float()
        if getattr(qs.format, "value", qs.format) != "nvfp4-pack-quantized" else _nvfp4_weight(sd, info.scheme)
        for name, sd in local.items()
    }
    return weights, rest, info.scheme


def _nvfp4_weight(sd: dict[str, torch.Tensor], scheme: Scheme) -> torch.Tensor:
    """An NVFP4 weight in float32, exactly: the library's decompressor unpacks to bf16 and
    rounds q * (scale / global) to bf16 at the end (tested: equal to this rounded to bf16)."""
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8

    from quantstudy.numerics import dequantize

    packed = sd["weight_packed"]
    q = unpack_fp4_from_uint8(packed, packed.shape[0], packed.shape[1] * 2, dtype=torch.float32)
    return dequantize(q, sd["weight_scale"], None, scheme.weights, global_scale=sd["weight_global_scale"].float())
