"""NVFP4 through the streaming quantizer (the path `quantstudy quantize` and the study take):
W4A4's static input global scale per linear calibrated on the walk's own forwards, and one
global scale per fused q/k/v and gate/up on every path, model-free RTN included (vLLM keeps
one per fused layer: members with different ones dequantize wrongly)."""

import pytest
import torch

from conftest import random_llama
from quantstudy.models.checkpoint import read_state_dict
from quantstudy.quantize.calibration import CalibrationSpec, load_calibration
from quantstudy.quantize.pipeline import quantize_checkpoint
from quantstudy.quantize.recipes import Recipe
from quantstudy.schemes import PRESETS

CALIB = CalibrationSpec("instruct-mix", 4, 32)
FUSED = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj"))
LINEARS = [n for group in FUSED for n in group] + ["self_attn.o_proj", "mlp.down_proj"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A random-init two-layer Llama saved as safetensors, with the default model's tokenizer."""
    model, tok = random_llama(layers=2, heads=4, kv_heads=2)
    folder = tmp_path_factory.mktemp("src") / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok


def _layer(state, i, name, leaf):
    return state[f"model.layers.{i}.{name}.{leaf}"]


@pytest.mark.parametrize("algorithm", ["rtn", "gptq"])
def test_nvfp4_w4a4_streams_with_calibrated_input_scales(source, tmp_path, algorithm):
    """Every linear gets an input global scale; linears reading one input share it (q/k/v,
    gate/up); each equals 448*6 / (the abs-max of its inputs when the quantized model runs the
    calibration set), found here by hooks on a float model carrying the checkpoint's weights."""
    from quantstudy.inference.loading import load_fake_quant_model
    from quantstudy.models.checkpoint import load_dequantized_weights
    from quantstudy.quantize.fp4 import calibrate_input_global_scales

    folder, model, tok = source
    out = quantize_checkpoint(folder, PRESETS["nvfp4"], tmp_path / "ckpt", Recipe(algorithm=algorithm), CALIB,
                              device="cpu").checkpoint.path
    state = read_state_dict(out)
    for i in range(2):
        for group in FUSED:
            for leaf in ("input_global_scale", "weight_global_scale"):
                first = _layer(state, i, group[0], leaf)
                assert all(torch.equal(first, _layer(state, i, n, leaf)) for n in group), (i, group, leaf)
    # the reference: the quantized weights in a float model, its linears' inputs over the same tokens
    weights, _, _ = load_dequantized_weights(out)
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, w in weights.items():
            ref.get_submodule(name).weight.copy_(w)
    names = [f"model.layers.{i}.{n}" for i in range(2) for n in LINEARS]
    expected = calibrate_input_global_scales(ref, load_calibration(CALIB, tok), names)
    for name in names:
        got = state[f"{name}.input_global_scale"]
        assert torch.isfinite(got).all() and got.item() > 0, name
        assert got.item() == pytest.approx(expected[name].item(), rel=1e-4), name
    ids = tok("Four bits for weights and activations", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = load_fake_quant_model(out)[0](ids).logits
    assert torch.isfinite(logits).all()


def test_nvfp4a16_model_free_rtn_shares_global_scales_as_in_memory(source, tmp_path):
    """Model-free RTN (tensor by tensor from the shards) writes the same packed weights, group
    scales and shared global scales as the in-memory quantizer, bit for bit."""
    from quantstudy.quantize.model import quantize_model_weights

    folder, model, _ = source
    scheme = PRESETS["nvfp4a16"]
    out = quantize_checkpoint(folder, scheme, tmp_path / "ckpt", Recipe(algorithm="rtn")).checkpoint.path
    state = read_state_dict(out)
    qweights, _ = quantize_model_weights(model, scheme, torch.bfloat16)
    for i in range(2):
        for group in FUSED:
            g = _layer(state, i, group[0], "weight_global_scale")
            assert all(torch.equal(g, _layer(state, i, n, "weight_global_scale")) for n in group)
        for n in LINEARS:
            qw = qweights[f"model.layers.{i}.{n}"]
            assert torch.equal(_layer(state, i, n, "weight_global_scale"), qw.global_scale.float().reshape(1)), n
            assert torch.equal(_layer(state, i, n, "weight_scale"), qw.scale), n


@pytest.mark.parametrize("name", ["nvfp4a16", "mxfp4a16", "mxfp8", "mxfp4", "nvfp4"])
def test_transformers_reloads_the_checkpoint(source, tmp_path, name):
    """transformers' compressed-tensors integration reads every FP4/MX checkpoint (in bf16 only:
    it decompresses into bf16 whatever the model's dtype): decompressed, its weights are ours
    rounded to bf16, bit for bit; run compressed in bf16, its logits are our fake-quant model's
    in bf16 -- except NVFP4 W4A4, whose activation QDQ compressed-tensors computes in the input's
    bf16 where vLLM's (and ours) work in float32; with the loaded model cast to float32 its
    forward is ours bit for bit, NVFP4 W4A4 included (our input global scales, read back)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    from quantstudy.inference.loading import load_fake_quant_model
    from quantstudy.models.checkpoint import load_dequantized_weights

    folder, _, tok = source
    out = quantize_checkpoint(folder, PRESETS[name], tmp_path / name, Recipe(algorithm="rtn"), CALIB,
                              device="cpu").checkpoint.path
    dense = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16,
                                                 quantization_config=CompressedTensorsConfig(run_compressed=False))
    weights, _, _ = load_dequantized_weights(out)
    for layer, w in weights.items():
        assert torch.equal(dense.get_submodule(layer).weight, w.to(torch.bfloat16)), layer
    ids = tok("Four bits per weight, and sometimes per activation", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        if name != "nvfp4":   # before the casts below (.float() also casts the rotary buffers in place)
            theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)(ids).logits
            assert torch.equal(theirs, load_fake_quant_model(out, dtype=torch.bfloat16)[0](ids).logits)
        ours = load_fake_quant_model(out, dtype=torch.bfloat16)[0].float()
        assert torch.equal(dense.float()(ids).logits, ours(ids).logits)
