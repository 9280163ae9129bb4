"""The microscaled formats (NVFP4, MXFP4, MXFP8) and W4A8-FP8: presets equal to
compressed-tensors 0.17.0's, quantize-dequantize bit-identical to the library's own, SQNR
on each grid, checkpoints that round-trip, GPTQ and AWQ below RTN on held-out activations."""

import dataclasses

import pytest
import torch

from conftest import random_llama
from quantstudy import numerics_fp as fp
from quantstudy.errors import QuantstudyError
from quantstudy.models.checkpoint import ct_scheme
from quantstudy.numerics import quantize_activations, sqnr_db
from quantstudy.quantize.rtn import rtn_quantize
from quantstudy.schemes import PRESETS, get_scheme, stored_weight_bytes

NEW = {"nvfp4": "NVFP4", "nvfp4a16": "NVFP4A16", "mxfp4": "MXFP4", "mxfp4a16": "MXFP4A16", "mxfp8": "MXFP8",
       "w4a8-fp8": "W4AFP8"}
MICRO = ["nvfp4", "mxfp4", "mxfp8"]   # the three weight grids (the A16 twins share them)

# SQNR lower bounds of RTN, from each grid (noise of a uniform rounding step D is D^2/12):
# - FP4 E2M1 has 1 mantissa bit: in a binade [2^e, 2^e+1) the step is 2^(e-1), so for values
#   spread over a binade the noise-to-signal ratio is (2^(2e-2)/12) / (7/3 * 2^2e) = 1/112,
#   20.5 dB. NVFP4's FP8 group scale puts each group of 16's abs-max at ~6 (top binade);
#   Gaussian values below 1/6 of the abs-max land in the flat zone near 0 (step 0.5), which
#   costs a little: measured 20.4 dB random, bound 19.5.
# - MXFP4: the power-of-two scale leaves the abs-max anywhere in [3.5, 7) of the grid (clipped
#   at 6 from 6 up): on average ~0.5 binade of range unused or clipped, ~1-1.5 dB below NVFP4;
#   measured 19.0 dB, bound 18.
# - MXFP8: E4M3, 3 mantissa bits -> 1/(112 * 16 * 4) ... = 31 dB as FP8 per channel (the
#   scale only moves the exponent); measured 31.5, bound 30.
# - W4A8-FP8 weights: INT4 g128 as W4A16 (test_primitives): 18.
# A scale off by a factor of 2 (half the grid unused) loses ~6 dB and fails every bound;
# truncation instead of rounding-to-nearest loses ~6 dB too.
SQNR_BOUND = {"nvfp4": 19.5, "mxfp4": 18.0, "mxfp8": 30.0, "w4a8-fp8": 18.0}
SQNR_BOUND_REAL = {"nvfp4": 19.0, "mxfp4": 17.5, "mxfp8": 30.0}   # heavier tails; measured below


@pytest.fixture(autouse=True)
def eager_fp4_cast(monkeypatch):
    """compressed-tensors' FP4 rounding is torch.compile'd (33 s to compile on a CPU): the
    reference calls its original Python function, which the compiled one computes (checked
    bit for bit in the slow test below)."""
    from compressed_tensors.quantization.quant_args import FP4_E2M1_DATA

    orig = FP4_E2M1_DATA.cast_to_fp4._torchdynamo_orig_callable
    monkeypatch.setattr(FP4_E2M1_DATA, "cast_to_fp4", staticmethod(orig))


def _ct_weight_qdq(w, name):
    """compressed-tensors' own RTN: per-group min/max (its weight observer), `generate_gparam`
    over the tensor for NVFP4, `calculate_qparams`, then `fake_quantize` and `quantize`."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize, quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    args = ct_scheme(PRESETS[name]).weights
    g = w.reshape(w.shape[0], -1, args.group_size)
    gs = generate_gparam(w.min(), w.max()) if args.strategy == "tensor_group" else None
    scale, zp = calculate_qparams(g.amin(2), g.amax(2), args, global_scale=gs)
    return (fake_quantize(w, scale, zp, args, global_scale=gs), quantize(w, scale, zp, args, global_scale=gs),
            scale, gs)


def _real_weight(name="model.layers.3.mlp.down_proj.weight"):
    """One real SmolLM2-135M weight, read from the converted folder (no model built)."""
    from safetensors import safe_open

    from quantstudy.models.references import resolve_model

    with safe_open(resolve_model("smollm2-135m") / "model.safetensors", framework="pt") as fh:
        return fh.get_tensor(name).float()


def _gaussian(rows=256, cols=512, seed=0):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    w[0, :32] = 0          # an all-zero group: the scale's zero replacement
    w[1, :16] *= 1e-3      # a tiny group: sub-normal FP8 scales / small exponents
    w[2, 5] = 40.0         # an outlier: the NVFP4 global scale and MX clipping
    return w


@pytest.mark.parametrize("name", MICRO)
@pytest.mark.parametrize("source", ["random", "real"])
def test_weight_qdq_is_bit_identical_to_compressed_tensors(name, source):
    w = _gaussian() if source == "random" else _real_weight()
    ct_qdq, ct_q, ct_scale, ct_global = _ct_weight_qdq(w, name)
    ours = rtn_quantize(w, PRESETS[name].weights, torch.bfloat16)
    assert torch.equal(ours.dequantize(), ct_qdq)
    assert torch.equal(ours.q.float(), ct_q.float())
    assert torch.equal(fp.value_scale(ours.scale, ours.args) if ct_global is None else ours.scale.float(), ct_scale)
    assert (ours.global_scale is None) == (ct_global is None)
    if ct_global is not None:
        assert torch.equal(ours.global_scale, ct_global)
    assert ours.dequantize().abs().sum() > 0 and not torch.equal(ours.dequantize(), w)   # it did quantize


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4", "mxfp8", "w4a8-fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_qdq_is_bit_identical_to_compressed_tensors(name, dtype):
    """Dynamic group (MX), dynamic-local group under a static global (NVFP4) and per-token
    FP8 (W4A8-FP8) activations, as the library's forward computes them."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp, generate_gparam

    act = PRESETS[name].activations
    args = ct_scheme(PRESETS[name]).input_activations
    x = (torch.randn(2, 7, 256, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    x[0, 3] = 0
    x[1, 2, :16] *= 1e-4
    xf = x.float()
    gs = generate_gparam(xf.min(), xf.max()) * 0.5 if act.dynamic == "local" else None   # a calibration that saw less
    scale, zp = compute_dynamic_scales_and_zp(xf, args, module=torch.nn.Module(), global_scale=gs)
    ct = fake_quantize(xf, scale, zp, args, global_scale=gs).to(dtype)
    ours = quantize_activations(x, act, gs)
    assert ours.dtype == dtype and torch.equal(ours, ct)
    assert torch.all(ours[0, 3] == 0) and not torch.equal(ours, x)


def test_fp4_rounding_buckets_and_ties():
    """E2M1 round-to-nearest, ties to even mantissa, clamped at 6 (the library's buckets)."""
    x = torch.tensor([0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 2.51, 3.5, 5.0, 5.01, 7.0, -0.74, -100.0])
    assert fp.round_fp4(x).tolist() == [0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 6.0, 6.0, -0.5, -6.0]


def test_mx_and_nv_scale_conventions():
    # MX: abs-max rounded to a power of two (up from mantissa 1.75), over 2^2 (FP4) / 2^8 (FP8)
    amax = torch.tensor([6.0, 7.0, 0.0, 448.0])
    assert fp.e8m0_value(fp.mx_scales(amax, 4)).tolist() == [1.0, 2.0, 2.0 ** -127, 128.0]
    # 448 = 1.75 * 2^8 rounds up to 2^9: scale 2 (the FP8 values then reach 224, not 448)
    assert fp.e8m0_value(fp.mx_scales(amax, 8)).tolist() == [2.0 ** -6, 2.0 ** -5, 2.0 ** -127, 2.0]
    # NV: global 448*6/absmax puts the largest group's scale at FP8's max; empty groups get 0.125
    g = fp.nv_global_scale(12.0)
    assert g.item() == 224.0
    assert fp.nv_scales(torch.tensor([12.0, 0.0]), g).float().tolist() == [448.0, 0.125]


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4", "mxfp8", "w4a8-fp8"])
def test_sqnr_above_the_grid_bound(name):
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(0))
    scheme = PRESETS[name] if name != "w4a8-fp8" else PRESETS[name].with_group_size(128)
    assert sqnr_db(w, rtn_quantize(w, scheme.weights, torch.bfloat16).dequantize()) > SQNR_BOUND[name]
    if name in SQNR_BOUND_REAL:
        real = _real_weight()
        assert sqnr_db(real, rtn_quantize(real, PRESETS[name].weights, torch.bfloat16).dequantize()) > SQNR_BOUND_REAL[name]


def test_nvfp4_beats_mxfp4_and_mxfp8_beats_both():
    """Finer scales (16 values, FP8 mantissa) beat power-of-two scales over 32 values."""
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(2))
    db = {n: sqnr_db(w, rtn_quantize(w, PRESETS[n].weights, torch.bfloat16).dequantize()) for n in MICRO}
    assert db["mxfp8"] > db["nvfp4"] + 8 > db["mxfp4"] + 8


@pytest.mark.parametrize("ours,theirs", list(NEW.items()))
def test_presets_equal_compressed_tensors_presets(ours, theirs):
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme

    mine, ref = ct_scheme(PRESETS[ours]), preset_name_to_scheme(theirs, ["Linear"])
    for field in ("weights", "input_activations"):
        a, b = getattr(mine, field), getattr(ref, field)
        assert (a is None and b is None) or a.model_dump() == b.model_dump(), field


def test_labels_sizes_and_fixed_groups():
    assert {n: PRESETS[n].label for n in NEW} == {
        "nvfp4": "NVFP4", "nvfp4a16": "NVFP4A16", "mxfp4": "MXFP4", "mxfp4a16": "MXFP4A16", "mxfp8": "MXFP8",
        "w4a8-fp8": "W4A8-FP8"}
    n, k = 576, 1536
    bits = {name: stored_weight_bytes(PRESETS[name].weights, n, k) * 8 / (n * k) for name in NEW}
    # 4 bits + an 8-bit scale per 16 (+ one FP32 global) / per 32 values; MXFP8 8 + 8/32
    assert bits["nvfp4"] == pytest.approx(4 + 8 / 16 + 32 / (n * k))
    assert bits["mxfp4"] == 4.25 and bits["mxfp8"] == 8.25
    assert bits["w4a8-fp8"] == pytest.approx(4 + 16 / 128)   # bf16 scales per 128, as W4A16
    with pytest.raises(QuantstudyError, match="fixes its group size"):
        get_scheme("mxfp4", group_size=64)
    assert get_scheme("nvfp4", group_size=16) == PRESETS["nvfp4"]
    assert get_scheme("w4a8-fp8", group_size=64).weights.group_size == 64
    assert len({PRESETS[n] for n in NEW}) == len(NEW)   # hashable, all distinct


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return random_llama()


@pytest.mark.parametrize("name", list(NEW))
def test_checkpoint_round_trip(tiny, tmp_path, name):
    """save -> our reader: bit-identical; the library's own decompression: identical for
    MX (power-of-two scales are exact in its bf16), our weights rounded to bf16 for NVFP4;
    NVFP4 keeps one global scale per fused q/k/v and gate/up; the fake-quant model built from
    the folder equals the in-memory one."""
    from quantstudy.inference.loading import load_fake_quant_model
    from quantstudy.models.checkpoint import load_dequantized_weights, read_state_dict
    from quantstudy.quantize.fp4 import calibrate_input_global_scales
    from quantstudy.quantize.model import apply_fake_quant, quantize_model_weights
    from quantstudy.quantize.writer import save_checkpoint

    model, tok = tiny
    scheme = PRESETS[name] if name != "w4a8-fp8" else PRESETS[name].with_group_size(64)
    qweights, reports = quantize_model_weights(model, scheme, torch.bfloat16)
    if scheme.activations is not None and scheme.activations.dynamic == "local":
        ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
        g = calibrate_input_global_scales(model, ids, list(qweights))
        qweights = {n: dataclasses.replace(qw, input_global_scale=g[n]) for n, qw in qweights.items()}
    folder = save_checkpoint(model, tok, qweights, scheme, tmp_path / name, torch.bfloat16, {"algorithm": "rtn"},
                             reports)
    weights, rest, back = load_dequantized_weights(folder)
    assert back.weights == scheme.weights and back.activations == scheme.activations
    for layer, qw in qweights.items():
        assert torch.equal(weights[layer], qw.dequantize()), layer
    state = read_state_dict(folder)
    prefix = "model.layers.0."
    if name.startswith(("nvfp4", "mxfp4")):
        assert state[prefix + "mlp.down_proj.weight_packed"].dtype == torch.uint8
        assert state[prefix + "mlp.down_proj.weight_scale"].dtype == (
            torch.float8_e4m3fn if name.startswith("nv") else torch.uint8)
    if name.startswith("nvfp4"):
        gs = [state[prefix + f"self_attn.{p}_proj.weight_global_scale"] for p in "qkv"]
        assert torch.equal(gs[0], gs[1]) and torch.equal(gs[0], gs[2])
        ct = _ct_decompress(state, scheme, prefix + "mlp.down_proj")
        assert torch.equal(ct, qweights[prefix + "mlp.down_proj"].dequantize(torch.bfloat16))
    elif name.startswith("mx"):
        ct = _ct_decompress(state, scheme, prefix + "mlp.down_proj")
        assert torch.equal(ct.float(), qweights[prefix + "mlp.down_proj"].dequantize())
    if scheme.activations is not None:
        ids = tok("Four bits per weight", return_tensors="pt")["input_ids"]
        loaded = load_fake_quant_model(folder)[0]
        import copy

        stored = copy.deepcopy(model)
        with torch.no_grad():
            for p in stored.parameters():
                p.copy_(p.to(torch.bfloat16).float())
            ours = apply_fake_quant(stored, qweights, scheme)
            assert torch.equal(loaded(ids).logits, ours(ids).logits)


def _ct_decompress(state, scheme, module):
    from compressed_tensors.compressors import BaseCompressor

    qs = ct_scheme(scheme)
    sd = {k.rsplit(".", 1)[1]: v for k, v in state.items() if k.rsplit(".", 1)[0] == module}
    return BaseCompressor.get_value_from_registry(qs.format).decompress(sd, qs)["weight"]


LAYERS = ["model.layers.2.self_attn.q_proj", "model.layers.2.mlp.down_proj"]


@pytest.fixture(scope="module")
def activations(smollm2):
    """(calibration X, held-out X, weight) per layer: instruct-mix calibrates, WikiText judges."""
    from quantstudy.quantize.calibration import CalibrationSpec, load_calibration

    model, tokenizer, _ = smollm2
    xs = {n: ([], []) for n in LAYERS}

    class Enough(Exception):
        """Raised after layer 2: the layers above it are not needed (a full forward costs 10x)."""

    def stop(*_):
        raise Enough

    for k, spec in enumerate((CalibrationSpec("instruct-mix", 16, 256), CalibrationSpec("wikitext", 2, 256, seed=1))):
        hooks = [model.get_submodule(n).register_forward_hook(
            lambda m, i, o, n=n, k=k: xs[n][k].append(i[0].reshape(-1, i[0].shape[-1]).detach())) for n in LAYERS]
        hooks.append(model.get_submodule("model.layers.3").register_forward_pre_hook(stop))
        with torch.no_grad():
            for row in load_calibration(spec, tokenizer):
                try:
                    model(row[None])
                except Enough:
                    pass
        for h in hooks:
            h.remove()
    return {n: (torch.cat(c), torch.cat(h), model.get_submodule(n).weight.detach().clone()) for n, (c, h) in xs.items()}


def _out_err(x, w, q):
    ref = x @ w.T
    return ((x @ q.T - ref).norm() / ref.norm()).item()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nvfp4a16", "mxfp4a16"])
def test_gptq_and_awq_below_rtn_on_held_out_activations(activations, name):
    """GPTQ (scales fixed before the sweep, FP4 rounding inside it) and AWQ (scale search over
    the FP4 value set, then clip search) against RTN, per layer, on held-out text; GPTQ also on
    its own calibration activations, which it minimises. (4k calibration tokens: with 2k, a
    late 1536-wide down_proj overfits -- held-out worse than RTN, INT4 W4A16 alike.)"""
    from quantstudy.quantize.awq import awq_clip_ratios, awq_quantize, awq_search_scales, input_statistics
    from quantstudy.quantize.gptq import accumulate_hessian, gptq_quantize

    args = PRESETS[name].weights
    for layer, (xc, xh, w) in activations.items():
        rtn = _out_err(xh, w, rtn_quantize(w, args, torch.bfloat16).dequantize())
        h, _ = accumulate_hessian(None, 0, xc)
        # abs-max scales (no clip search: ~20 s a matrix on FP4 grids today; tested on its own below)
        gq = gptq_quantize(w, h, args, torch.bfloat16, mse_clip=False).dequantize()
        gptq = _out_err(xh, w, gq)
        assert _out_err(xc, w, gq) < _out_err(xc, w, rtn_quantize(w, args, torch.bfloat16).dequantize())
        abs_sum, gram, n = input_statistics(xc)
        s = awq_search_scales(abs_sum / n, gram, [w], args, torch.bfloat16)
        clip = awq_clip_ratios(gram / torch.outer(s, s), w * s, args, torch.bfloat16)
        awq = _out_err(xh, w, awq_quantize(w * s, args, torch.bfloat16, clip).dequantize() / s)
        print(f"{name} {layer}: rtn {rtn:.4f} gptq {gptq:.4f} awq {awq:.4f}")
        assert gptq < rtn and awq < rtn, (layer, rtn, gptq, awq)


def test_fp_mse_clip_never_worse_than_absmax_on_its_objective():
    """The clip search over the FP4 grid: per group never worse than abs-max, better in sum."""
    from quantstudy.numerics import dequantize, quantize
    from quantstudy.quantize.fp4 import fp_mse_clip_qparams, fp_qparams

    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(3)) ** 3   # heavy tails
    for name in ("nvfp4", "mxfp4"):
        args = PRESETS[name].weights

        def err(scale, g):
            d = w - dequantize(quantize(w, scale, None, args, global_scale=g), scale, None, args, global_scale=g)
            return d.abs().pow(2.4).reshape(64, -1, args.group_size).sum(2)

        absmax, clipped = err(*fp_qparams(w, args)), err(*fp_mse_clip_qparams(w, args))
        assert torch.all(clipped <= absmax) and clipped.sum() < absmax.sum(), name


def test_fp_mse_clip_search_equals_the_exhaustive_search():
    """Skipping groups whose stored scale a candidate leaves unchanged changes nothing: the same
    scales as evaluating every candidate (coarse grid, then +-4 around each group's best) on
    every group, for the three grids."""
    from quantstudy.quantize.fp4 import fp_mse_clip_qparams

    def exhaustive(w, args, grid=100, steps=80, coarse=5, norm=2.4):
        g = fp.nv_global_scale(w.abs().max()) if fp.is_nv(args) else None
        wg = w.float().reshape(-1, args.group_size)
        absmax = torch.maximum(wg.amin(1).clamp(max=0).abs(), wg.amax(1).clamp(min=0))

        def err(i):
            scale = fp.group_scales(absmax * (1 - i.float() / grid), args, g)
            step = fp.value_scale(scale, args, g)[:, None]
            return (fp.qdq(wg, step, args.num_bits) - wg).abs().pow(norm).sum(1), scale

        best_e, best_s = err(torch.zeros(len(wg), dtype=torch.long))
        best_i = torch.zeros(len(wg), dtype=torch.long)
        cands = [torch.full_like(best_i, i) for i in range(coarse, steps, coarse)]
        for phase in (0, 1):
            for i in cands:
                e, s = err(i)
                better = e < best_e
                best_e, best_i = torch.where(better, e, best_e), torch.where(better, i, best_i)
                best_s = torch.where(better, s.view(torch.uint8), best_s.view(torch.uint8)).view(s.dtype)
            center = best_i.clone()
            cands = [(center + o).clamp(0, steps - 1) for o in range(-(coarse - 1), coarse) if o]
        return best_s.reshape(w.shape[0], -1)

    w = torch.randn(48, 512, generator=torch.Generator().manual_seed(5)) ** 3
    for name in ("nvfp4", "mxfp4", "mxfp8"):
        args = PRESETS[name].weights
        ours, _ = fp_mse_clip_qparams(w, args)
        assert torch.equal(ours.view(torch.uint8), exhaustive(w, args).view(torch.uint8)), name
