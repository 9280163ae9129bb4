"""Loading a model to run it in process: a float folder (HF or embedded), or a checkpoint
emulated by fake-quant, with no remote code and no network.

`load_for_inference` is the one door the evaluate and compare stages use: it looks at
the folder's config and returns the model the in-process engine scores, plus how it was
loaded ("float" or "fakequant") -- part of a result's identity in the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from quantstudy.errors import QuantstudyError
from quantstudy.inference.fake_quant import install_fake_quant
from quantstudy.inference.kv_quant import install_fp8_kv, split_kv_scales
from quantstudy.models.checkpoint import load_dequantized_weights, read_checkpoint_info
from quantstudy.models.references import read_config, resolve_model, torch_dtype
from quantstudy.models.shards import check_weights_match_config


def load_model(ref: str | Path, dtype: str = "float32", allow_pickle: bool = False):
    """Load (model, tokenizer, folder) in eval mode; no remote code, no network."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(ref, allow_pickle=allow_pickle)
    check_weights_match_config(folder)
    use_safetensors = None if allow_pickle else True
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype(dtype), use_safetensors=use_safetensors, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantstudyError(f"could not load model from {folder}: {first}") from None
    model.eval()
    return model, tokenizer, folder


def load_fake_quant_model(folder: str | Path, dtype: torch.dtype = torch.float32):
    """Build the quantized model from a checkpoint for PyTorch evaluation on CPU:
    weights dequantized by compressed-tensors, activations quantized on the fly, and with
    an FP8 KV cache, K and V quantized with the checkpoint's scales on their way into it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    weights, rest, scheme = load_dequantized_weights(folder)
    kv_scales = split_kv_scales(rest)   # the attention's k_scale / v_scale: not model parameters
    # NVFP4 W4A4's per-linear input global scales: activation parameters, not model ones
    input_globals = {k.rsplit(".", 1)[0]: rest.pop(k) for k in [k for k in rest if k.endswith(".input_global_scale")]}
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
    install_fake_quant(model, weights, scheme.activations, input_globals)
    if scheme.kv_cache is not None:
        try:
            install_fp8_kv(model, kv_scales)
        except ValueError as exc:
            raise QuantstudyError(f"{folder}: {exc}") from None
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return model, tokenizer, scheme


@dataclass(frozen=True)
class InferenceModel:
    """How a folder is run in process: `load()` gives the model (called only when needed)."""

    folder: Path
    how: str                   # "float" | "fakequant"
    label: str | None          # scheme label (and algorithm) of a checkpoint; None for a float folder
    scheme: object | None      # the checkpoint's Scheme
    load: Callable[[], object]


def load_for_inference(folder: str | Path, dtype: str = "float32") -> InferenceModel:
    """Fake-quant for a quantized checkpoint, plain loading for a float folder (a BF16 copy,
    another baseline). Nothing is loaded until `load()` is called."""
    folder = Path(folder)
    if "quantization_config" in read_config(folder):
        info = read_checkpoint_info(folder)
        algorithm = (info.recipe or {}).get("algorithm")
        label = info.scheme.label + (f" ({algorithm})" if algorithm else "")
        return InferenceModel(folder, "fakequant", label, info.scheme,
                              lambda: load_fake_quant_model(folder, dtype=torch_dtype(dtype))[0])
    return InferenceModel(folder, "float", None, None, lambda: load_model(folder, dtype=dtype)[0])
