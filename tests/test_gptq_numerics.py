"""GPTQ's linear algebra where it departs from the textbook for speed: the bf16 two-pass Gram
and the one-factorisation inverse-Hessian Cholesky factor. Each must agree with float64."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from quantstudy.quantize import gptq
from quantstudy.quantize.gptq import _inverse_hessian_cholesky, bf16_gram_is_exact, gram_of_bf16


def _bf16_activations(tokens=1024, d=576, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d, generator=g) * (torch.rand(d, generator=g) * 3)
    x[:, 5] *= 40   # an outlier channel, as real activations have
    return x.to(torch.bfloat16)


def _rel_err(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max()).item()


def test_two_pass_bf16_gram_is_float32_accurate():
    """P = bf16(x^T x) alone is 1e-3 off; P + bf16(x^T x - P) must be within float32's reach."""
    if not bf16_gram_is_exact(torch.device("cpu")):
        pytest.skip("this CPU's bf16 GEMM rounds before addmm's subtraction: the float32 Gram is used")
    for d in (96, 576):
        x = _bf16_activations(d=d)
        ref = x.double().T @ x.double()
        one_pass = (x.T @ x).float()
        assert _rel_err(one_pass, ref) > 1e-4          # what the second pass is for
        assert _rel_err(gram_of_bf16(x), ref) < 2e-5
        assert _rel_err(x.float().T @ x.float(), ref) < 2e-6


def test_bf16_gram_falls_back_where_the_backend_rounds_first(monkeypatch):
    monkeypatch.setattr(gptq, "_BF16_GRAM_EXACT", {})
    monkeypatch.setattr(gptq, "gram_of_bf16", lambda xb: (xb.T @ xb).float())   # one pass: 1e-3 off
    assert not gptq.bf16_gram_is_exact(torch.device("cpu"))


def test_inverse_hessian_factor_is_the_upper_cholesky_of_the_damped_inverse():
    g = torch.Generator().manual_seed(0)
    for d in (64, 576):
        x = torch.randn(4 * d, d, generator=g) * torch.rand(d, generator=g)
        h = (2 * x.T @ x / x.shape[0]).double()
        u = _inverse_hessian_cholesky(h, 0.01, "t")
        assert torch.equal(u, u.triu()) and bool((u.diagonal() > 0).all())
        damped = h + 0.01 * h.diagonal().mean() * torch.eye(d, dtype=torch.float64)
        ref = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)   # GPTQ's definition of U
        assert _rel_err(u, ref) < 1e-5


def test_bf16_forwards_hand_gptq_the_hessian_of_what_the_linears_read():
    """Under bf16 autocast each linear reads bf16(x): the one-pass walk's Hessian is 2/N of that
    input's Gram, summed over every batch, to float32 accuracy (not bf16's 1e-3)."""
    from quantstudy.quantize import sequential
    from quantstudy.quantize.algorithms import gptq as gptq_handler
    from quantstudy.quantize.recipes import Recipe
    from quantstudy.schemes import get_scheme

    if not bf16_gram_is_exact(torch.device("cpu")):
        pytest.skip("this CPU's bf16 GEMM rounds before addmm's subtraction: the float32 Gram is used")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    calib = torch.randint(0, 128, (6, 64))
    reference: dict[str, list[torch.Tensor]] = {}
    probe = copy.deepcopy(model)
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: reference.setdefault(n.rsplit(".", 1)[-1], []).append(
        a[0].detach().to(torch.bfloat16).clone())) for n, m in probe.model.layers[0].named_modules()
        if isinstance(m, torch.nn.Linear)]
    # the same forwards the walk runs: bf16 GEMMs, float32 weights, batches of 2; the walk's
    # group of q/k/v (and gate/up) reads one input, so its first member's record is the group's
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, 6, 2):
            probe(calib[i:i + 2])
    for h in hooks:
        h.remove()
    seen = {}
    real = gptq_handler.gptq_quantize

    def spy(w, h, *args, layer: str = "", **kwargs):
        seen[layer.rsplit(".", 1)[-1]] = h.clone()
        return real(w, h, *args, layer=layer, **kwargs)

    gptq_handler.gptq_quantize = spy
    try:
        sequential.walk(model, sequential.ResidentWeights(), sequential.KeepQuantized(), get_scheme("w4a16", 32),
                        Recipe(algorithm="gptq"), calib, torch.float32, batch_size=2, gemm_dtype=torch.bfloat16)
    finally:
        gptq_handler.gptq_quantize = real
    assert set(seen) == {"q_proj", "o_proj", "gate_proj", "down_proj"}
    for owner, h in seen.items():
        # o_proj and down_proj read activations of already-quantized linears: compare only the
        # groups whose input comes straight from a norm of the unquantized layer's inputs
        if owner not in ("q_proj",):
            continue
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in reference[owner]]).double()
        expected = 2 * x.T @ x / x.shape[0]
        assert _rel_err(h, expected) < 2e-5, owner
