"""GPTQ's linear algebra where it departs from the textbook for speed: the bf16 two-pass Gram
and the one-factorisation inverse-Hessian Cholesky factor. Each must agree with float64. (That
the walk hands GPTQ the Gram of what each linear read, bf16 forwards included: test_one_pass.py.)"""

import pytest
import torch

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
