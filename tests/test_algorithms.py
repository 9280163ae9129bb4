"""The paper's algorithms on real layers of the default model: GPTQ, act-order, MSE
clipping, AWQ, SmoothQuant. Errors are layer-output errors ||X W^T - X Q^T|| measured on
held-out activations (WikiText), not on the calibration activations (instruct-mix)."""

import copy

import pytest
import torch

from quantstudy.errors import QuantstudyError
from quantstudy.quantize.awq import awq_clip_ratios, awq_quantize, awq_search_scales, input_statistics
from quantstudy.quantize.calibration import CalibrationSpec, load_calibration
from quantstudy.quantize.gptq import accumulate_hessian, gptq_quantize
from quantstudy.numerics import dequantize, quantize
from quantstudy.quantize.primitives import compute_qparams, mse_clip_qparams, reduce_min_max, reduce_sum
from quantstudy.quantize.rtn import rtn_quantize
from quantstudy.quantize.sequential import smooth_model
from quantstudy.schemes import get_scheme

SCHEMES = ["w8a8-int8", "w8a8-fp8", "w4a16", "w4a16-asym"]
LAYERS = ["model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.o_proj", "model.layers.2.mlp.down_proj",
          "model.layers.17.mlp.up_proj", "model.layers.28.self_attn.v_proj"]


def _args(name):
    return get_scheme(name, 64 if name.startswith("w4") else None).weights


def _inputs(model, ids, names):
    xs = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: xs[n].append(i[0].reshape(-1, i[0].shape[-1]).detach())) for n in names]
    with torch.no_grad():
        for row in ids:
            model(row[None])
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in xs.items()}


@pytest.fixture(scope="module")
def activations(smollm2):
    """(calibration X, held-out X, weight) per layer."""
    model, tokenizer, _ = smollm2
    calib = load_calibration(CalibrationSpec("instruct-mix", 16, 256), tokenizer)
    held = load_calibration(CalibrationSpec("wikitext", 8, 256, seed=1), tokenizer)
    xc, xh = _inputs(model, calib, LAYERS), _inputs(model, held, LAYERS)
    return {n: (xc[n], xh[n], model.get_submodule(n).weight.detach().clone()) for n in LAYERS}


def _out_err(x, w, q):
    ref = x @ w.T
    return ((x @ q.T - ref).norm() / ref.norm()).item()


def _gptq(xc, w, args, **kw):
    h, _ = accumulate_hessian(None, 0, xc)
    return gptq_quantize(w, h, args, torch.bfloat16, **kw).dequantize()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_gptq_output_error_below_rtn(activations, scheme):
    """On the calibration activations GPTQ is below RTN for every layer (it minimises
    exactly that); on held-out text it is below on average, and no layer is more than
    1% worse (measured: FP8 on a late v_proj is a tie, 0.0270 vs 0.0269 — 4k calibration
    tokens against a 576-wide input, and FP8's error is already relative)."""
    args = _args(scheme)
    held_rtn, held_gptq = [], []
    for layer, (xc, xh, w) in activations.items():
        rtn, gptq = rtn_quantize(w, args, torch.bfloat16).dequantize(), _gptq(xc, w, args)
        assert _out_err(xc, w, gptq) < _out_err(xc, w, rtn), layer
        held_rtn.append(_out_err(xh, w, rtn))
        held_gptq.append(_out_err(xh, w, gptq))
        assert held_gptq[-1] < 1.01 * held_rtn[-1], (layer, held_gptq[-1], held_rtn[-1])
    assert sum(held_gptq) < 0.9 * sum(held_rtn)


@pytest.mark.slow
def test_actorder_and_mse_clip_not_worse_on_average(activations):
    plain, ao, mse, both = [], [], [], []
    for scheme in SCHEMES:
        args = _args(scheme)
        for xc, xh, w in activations.values():
            plain.append(_out_err(xh, w, _gptq(xc, w, args, actorder=False, mse_clip=False)))
            ao.append(_out_err(xh, w, _gptq(xc, w, args, actorder=True, mse_clip=False)))
            mse.append(_out_err(xh, w, _gptq(xc, w, args, actorder=False, mse_clip=True)))
            both.append(_out_err(xh, w, _gptq(xc, w, args, actorder=True, mse_clip=True)))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    assert mean(ao) <= mean(plain)
    assert mean(both) <= mean(plain)
    assert mean(mse) <= mean(plain) * 1.02  # MSE clip targets weight error; output error ~unchanged


@pytest.mark.parametrize("scheme", SCHEMES + ["fp8-block", "w8a16"])
def test_mse_clip_never_worse_than_absmax_on_its_objective(scheme):
    args = get_scheme(scheme, 64 if scheme in ("w4a16", "w4a16-asym", "fp8-block") else None).weights
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(3)) ** 3  # heavy tails: clipping pays
    def err(scale, zp):
        return reduce_sum((w - dequantize(quantize(w, scale, zp, args), scale, zp, args)).abs().pow(2.4), args)
    absmax = err(*compute_qparams(*reduce_min_max(w, args), args, torch.bfloat16))
    clipped = err(*mse_clip_qparams(w, args, torch.bfloat16))
    assert torch.all(clipped <= absmax)
    assert clipped.sum() < absmax.sum()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_mse_clip_early_stop_picks_the_full_coarse_search_scales(scheme, monkeypatch):
    """The coarse pass stops after COARSE_PATIENCE ratios that improve no scale: on heavy-tailed
    weights (optima far from abs-max) it picks what evaluating every coarse ratio picks."""
    import quantstudy.quantize.primitives as primitives

    args = get_scheme(scheme, 64 if scheme in ("w4a16", "w4a16-asym") else None).weights
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(3)) ** 3
    early = mse_clip_qparams(w, args, torch.bfloat16)
    monkeypatch.setattr(primitives, "COARSE_PATIENCE", 10**6)
    full = mse_clip_qparams(w, args, torch.bfloat16)
    assert torch.equal(early[0], full[0])
    assert (early[1] is None and full[1] is None) or torch.equal(early[1], full[1])


def test_gptq_leaves_the_callers_hessian_as_it_was():
    """Dead columns, dampening and act-order work on copies: one Hessian serves several calls
    (q/k/v per linear under tensor-wise scales)."""
    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(1))
    x[:, 3] = 0
    h, _ = accumulate_hessian(None, 0, x)
    before = h.clone()
    for actorder in (True, False):
        gptq_quantize(torch.randn(16, 64), h, _args("w8a8-int8"), torch.bfloat16, actorder=actorder)
        assert torch.equal(h, before)


def test_gptq_with_identity_hessian_is_rtn():
    """No input correlations, nothing to compensate: GPTQ reduces to round-to-nearest."""
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    for scheme in SCHEMES:
        args = get_scheme(scheme, 64 if scheme.startswith("w4") else None).weights
        g = gptq_quantize(w, torch.eye(128), args, torch.bfloat16, actorder=False, mse_clip=False, dampening=1e-9)
        r = rtn_quantize(w, args, torch.bfloat16)
        assert torch.equal(g.q.view(torch.int8), r.q.view(torch.int8)) and torch.equal(g.scale, r.scale)


def test_gptq_masks_dead_columns_and_fails_clearly_on_bad_hessians():
    w = torch.randn(32, 64)
    x = torch.randn(500, 64)
    x[:, :5] = 0  # dead input channels: zero rows/columns in H
    h, _ = accumulate_hessian(None, 0, x)
    q = gptq_quantize(w, h, _args("w8a8-int8"), torch.bfloat16)
    assert torch.all(q.dequantize()[:, :5] == 0)  # never-used columns carry no weight
    bad = -torch.eye(64)
    bad[0, 0] = 1.0
    with pytest.raises(QuantstudyError, match="not positive definite"):
        gptq_quantize(w, bad, _args("w8a8-int8"), torch.bfloat16, layer="layers.0.q_proj")


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["w4a16", "w4a16-asym"])
def test_awq_output_error_below_rtn(activations, scheme):
    args = _args(scheme)
    for layer, (xc, xh, w) in activations.items():
        abs_sum, gram, n = input_statistics(xc)
        s = awq_search_scales(abs_sum / n, gram, [w], args, torch.bfloat16)
        clip = awq_clip_ratios(gram / torch.outer(s, s), w * s, args, torch.bfloat16)
        effective = awq_quantize(w * s, args, torch.bfloat16, clip).dequantize() / s  # 1/s folds into the input
        rtn = rtn_quantize(w, args, torch.bfloat16).dequantize()
        assert _out_err(xh, w, effective) < _out_err(xh, w, rtn), layer


@pytest.fixture(scope="module")
def smoothed(smollm2):
    """(float model, SmoothQuant-0.8 copy, the calibration ids used)."""
    model, tokenizer, _ = smollm2
    copy_ = copy.deepcopy(model)
    calib = load_calibration(CalibrationSpec("instruct-mix", 4, 128), tokenizer)
    smooth_model(copy_, calib, alpha=0.8)
    return model, copy_, calib


@pytest.mark.slow
def test_smoothquant_preserves_the_float_model(smoothed, smollm2):
    model, smoothed_model, _ = smoothed
    tokenizer = smollm2[1]
    norm0 = smoothed_model.model.layers[0].input_layernorm.weight
    assert not torch.allclose(norm0, model.model.layers[0].input_layernorm.weight)  # it did something
    ids = tokenizer("Smoothing moves outliers from activations into weights.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = model(ids).logits, smoothed_model(ids).logits
    assert (a - b).abs().max() / a.abs().max() < 1e-4


@pytest.mark.slow
def test_smoothquant_flattens_activation_outliers(smoothed):
    """What SmoothQuant is for: the per-channel activation range entering q/k/v evens out."""
    model, smoothed_model, calib = smoothed
    name = "model.layers.5.self_attn.q_proj"
    before, after = _inputs(model, calib, [name])[name], _inputs(smoothed_model, calib, [name])[name]
    spread = lambda x: (x.abs().amax(0).max() / x.abs().amax(0).median()).item()  # noqa: E731
    assert spread(after) < spread(before)
