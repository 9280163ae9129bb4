"""The true-sequential walk: one forward per decoder layer, each linear group quantized when
every calibration batch has brought it its input (quantize/one_pass.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from quantstudy.models.families import family_for
from quantstudy.quantize import sequential
from quantstudy.quantize.activations import Activations
from quantstudy.quantize.layerwise import LayerWork
from quantstudy.quantize.one_pass import input_groups, run_layer
from quantstudy.quantize.recipes import Recipe, get_algorithm
from quantstudy.schemes import get_scheme

from hessian_spy import recorded_hessians

N, SEQ = 8, 64


def tiny(layers=2, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def calib(seed=1):
    return torch.randint(0, 128, (N, SEQ), generator=torch.Generator().manual_seed(seed))


def _layer_inputs(model):
    layers = sequential.decoder_layers(model)
    acts = Activations()
    kwargs = sequential.capture_inputs(model, layers, calib(), 2, acts)
    return list(zip(acts, kwargs[0]))


@pytest.mark.parametrize("smoothquant,scheme", [(None, "w4a16"), (0.8, "w8a8-int8")])
def test_the_pass_returns_the_quantized_layers_own_output(smoothquant, scheme):
    """What leaves the pass -- the next layer's inputs -- is the function of the layer as
    written: smoothed norms and dequantized weights, not the float layer's."""
    model = tiny(1)
    batches = _layer_inputs(model)
    layer = model.model.layers[0]

    def outputs():
        return torch.cat([o[0] if isinstance(o, tuple) else o for o in (layer(h, **kw) for h, kw in batches)])

    float_out = outputs()
    scheme_ = get_scheme(scheme, 32 if scheme == "w4a16" else None)
    work = LayerWork(layer, [], [n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)], scheme_,
                     torch.float32, "model.layers.0", family_for(["LlamaForCausalLM"]))
    groups = input_groups(layer, batches[0][0], batches[0][1], work.linears, None)
    assert groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                      ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    gptq, config = get_algorithm("gptq"), Recipe("gptq").algorithm_config()
    committed = []

    def commit(name, qw):
        committed.append(name)
        work.module(name).weight.data.copy_(qw.dequantize(torch.float32))

    norm_before = layer.input_layernorm.weight.detach().clone()
    out = torch.cat(run_layer(work, batches, groups, lambda w, names, h: gptq.quantize_group(w, names, h, config),
                              commit, smoothquant))
    assert sorted(committed) == sorted(work.linears)
    assert (smoothquant is not None) == (not torch.equal(layer.input_layernorm.weight, norm_before))
    rerun = outputs()
    scale = float_out.abs().max().item()
    assert torch.allclose(out, rerun, atol=1e-5 * scale)
    assert not torch.allclose(out, float_out, atol=1e-5 * scale)   # it is quantized


@pytest.mark.parametrize("gemm_dtype", [None, torch.bfloat16])
def test_each_hessian_is_of_the_input_its_linear_saw_in_the_pass(gemm_dtype):
    """True sequential: o_proj's Hessian comes from attention over quantized q/k/v, the MLP's
    from the quantized attention -- 2/N X^T X of exactly what each linear read. Under bf16
    forwards a linear reads bf16(x), and its Hessian (from two bf16 GEMMs) must be that input's
    to float32 accuracy: the float32 Gram of x is 1e-3 away, one bf16 GEMM as far."""
    from quantstudy.quantize.gptq import bf16_gram_is_exact

    if gemm_dtype is not None and not bf16_gram_is_exact(torch.device("cpu")):
        pytest.skip("this CPU's bf16 GEMM rounds before addmm's subtraction: the float32 Gram is used")
    model = tiny(1)
    seen_inputs: dict[str, list[torch.Tensor]] = {}
    for name, m in model.model.layers[0].named_modules():
        if isinstance(m, torch.nn.Linear):
            def keep(_m, inp, _out, _n=name.rsplit(".", 1)[-1]):
                if inp[0].shape[0] == 2:   # a calibration batch, not the one-sample probe
                    seen_inputs.setdefault(_n, []).append(inp[0].detach().to(gemm_dtype or inp[0].dtype))
            m.register_forward_hook(keep)
    stats: dict = {}
    with recorded_hessians() as hessians:
        sequential.walk(model, sequential.ResidentWeights(), sequential.KeepQuantized(), get_scheme("w4a16", 32),
                        Recipe("gptq"), calib(), torch.float32, batch_size=2, gemm_dtype=gemm_dtype, stats=stats)
    assert stats["forwards_per_layer"] == 1
    assert set(hessians) == {"q_proj", "o_proj", "gate_proj", "down_proj"}
    for owner, h in hessians.items():
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen_inputs[owner]]).double()
        assert x.shape[0] == N * SEQ
        expected = 2 * x.T @ x / x.shape[0]
        assert torch.allclose(h, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item()), owner


def test_each_layer_runs_once_on_the_whole_batch():
    """Every batch runs through each layer once (after a one-sample probe of the first layer:
    the others, of the same class, share its dataflow), where llm-compressor runs it twice; the
    two-forward walk remains when asked for or when activations spill."""
    def batch_sizes(recipe, max_memory=None):
        model = tiny(2)
        sizes: list[list[int]] = [[] for _ in model.model.layers]
        for i, layer in enumerate(model.model.layers):
            layer.register_forward_pre_hook(lambda _m, args, _i=i: sizes[_i].append(args[0].shape[0]))
        stats: dict = {}
        sequential.walk(model, sequential.ResidentWeights(), sequential.KeepQuantized(), get_scheme("w4a16", 32),
                        recipe, calib(), torch.float32, batch_size=2, max_memory=max_memory, stats=stats)
        return sizes, stats["forwards_per_layer"]

    assert batch_sizes(Recipe("gptq")) == ([[1, 2, 2, 2, 2], [2, 2, 2, 2]], 1)
    # four batches of two, twice each, except the last layer, whose outputs nothing reads
    assert batch_sizes(Recipe("gptq", true_sequential=False)) == ([[2] * 8, [2] * 4], 2)
    assert batch_sizes(Recipe("gptq"), max_memory=1)[1] == 2   # spilled activations: batch by batch
    assert batch_sizes(Recipe("awq"))[1] == 2   # AWQ searches scales on whole-layer outputs: batch by batch


def test_true_sequential_gptq_is_no_worse_than_two_forwards():
    """On the model's own outputs: the one-pass walk's logits are at least as close to the float
    model's as the two-forward walk's (each linear compensates the quantized ones before it)."""
    ids = calib(seed=7)
    base = tiny(2, seed=3)
    with torch.no_grad():
        ref = base(ids).logits
    errors = {}
    for flag in (True, False):
        model = copy.deepcopy(base)
        sequential.quantize_sequential(model, get_scheme("w4a16", 32), Recipe("gptq", true_sequential=flag),
                                       calib(seed=5), torch.float32, batch_size=2)
        with torch.no_grad():
            errors[flag] = (model(ids).logits - ref).pow(2).mean().item()
    assert errors[True] <= errors[False] * 1.05, errors
