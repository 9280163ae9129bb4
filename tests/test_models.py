"""Model references: embedded conversion, folder validation, safe loading."""

import json
import time

import pytest
import torch

from quantstudy.errors import QuantstudyError
from quantstudy.models import resolve_model
from quantstudy.models.references import validate_hf_folder


def _write_folder(tmp_path, config=None, weights=True):
    from safetensors.torch import save_file

    folder = tmp_path / "m"
    folder.mkdir()
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"} if config is None else config
    (folder / "config.json").write_text(json.dumps(cfg))
    if weights:
        save_file({"w": torch.zeros(64, 64)}, folder / "model.safetensors")
    return folder


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(QuantstudyError, match="not found"):
        resolve_model(tmp_path / "nope")


def test_truncated_safetensors_detected(tmp_path):
    folder = _write_folder(tmp_path)
    validate_hf_folder(folder)  # intact: fine
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(QuantstudyError, match="truncated"):
        validate_hf_folder(folder)
    (folder / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(QuantstudyError, match="not a readable safetensors"):
        validate_hf_folder(folder)


def test_config_without_architecture(tmp_path):
    folder = _write_folder(tmp_path, config={"model_type": "llama"})
    with pytest.raises(QuantstudyError, match="architectures"):
        resolve_model(folder)


def test_broken_config_json(tmp_path):
    folder = _write_folder(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(QuantstudyError, match="not valid JSON"):
        resolve_model(folder)


def test_pickle_weights_refused_unless_allowed(tmp_path):
    folder = _write_folder(tmp_path, weights=False)
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(QuantstudyError, match="pickle"):
        resolve_model(folder)
    assert resolve_model(folder, allow_pickle=True) == folder


def test_non_gguf_file_refused(tmp_path):
    f = tmp_path / "weights.txt"
    f.write_text("x")
    with pytest.raises(QuantstudyError, match="gguf"):
        resolve_model(f)


@pytest.mark.slow
def test_embedded_model_converts_once_and_loads_fast(smollm2):
    model, tokenizer, folder = smollm2
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    start = time.perf_counter()
    assert resolve_model("smollm2-135m") == folder  # cached: no second conversion
    assert time.perf_counter() - start < 5
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    assert tokenizer.chat_template  # the instruct model's template survives conversion
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.slow
def test_embedded_weights_sit_on_a_q4_1_grid(smollm2):
    """Every group of 32 input weights takes values d*q + m, q in 0..15 (GGUF Q4_1).

    compressed-tensors' asymmetric INT4 stores an *integer* zero point, so even at
    group 32 it cannot reproduce Q4_1's float offset m: RTN recovers the step d exactly
    (max - min = 15 d) but rounds -m/d, which costs ~22 dB SQNR, not zero error."""
    from quantstudy.numerics import sqnr_db
    from quantstudy.quantize.rtn import rtn_quantize
    from quantstudy.schemes import get_scheme

    w = smollm2[0].get_submodule("model.layers.3.mlp.down_proj").weight.detach().double()
    groups = w.reshape(w.shape[0], -1, 32)[:16].reshape(-1, 32)
    lo, hi = groups.amin(1, keepdim=True), groups.amax(1, keepdim=True)
    levels = (groups - lo) / ((hi - lo) / 15)
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    qw = rtn_quantize(w.float(), get_scheme("w4a16-asym", 32).weights, torch.float32)
    assert 15 < sqnr_db(w, qw.dequantize()) < 40
