"""The roofline out of sample and across GPUs: the published cells' split and fit, vLLM's
collectives, tensor/pipeline parallelism, and fixed deployments with their crossover."""
import dataclasses
import json

import pytest

from quantstudy.bench import collectives as C
from quantstudy.bench import roofline_constants as K
from quantstudy.bench import roofline_validation as V
from quantstudy.bench.deployment import crossover, predict_deployment
from quantstudy.bench.roofline import KernelTimes, predict
from quantstudy.errors import QuantstudyError
from quantstudy.hardware import get_gpu
from quantstudy.models.shape import ModelShape

L8, L70, L405 = (ModelShape.known(f"llama-3.1-{s}") for s in ("8b", "70b", "405b"))


@pytest.fixture(scope="module")
def cells():
    return V.load_cells()


def test_published_cells_are_sourced_and_split_by_position(cells):
    raw = json.loads(V.CELLS_FILE.read_text())["cells"]
    assert len(raw) >= 30 and all(c["source"].startswith("http") and c["quote"] for c in raw)
    assert len(cells) >= 30
    fit, val = V.split(cells)
    # Every third cell of the documented order, nothing else: chosen before any error is seen.
    order = sorted(cells, key=lambda c: (c.source, c.gpu, c.model, c.format, c.metric, c.id))
    assert [c.id for c in fit] == [c.id for c in order[::3]]
    assert {c.id for c in fit}.isdisjoint(c.id for c in val) and len(fit) + len(val) == len(cells)
    # The fit third spans several cards, formats and both kinds of metric.
    assert len({c.gpu for c in fit}) >= 3 and len({c.format for c in fit}) >= 3
    assert {c.kind for c in fit} == {"latency", "throughput"}


def test_shipped_gpu_constants_are_the_fit_of_the_fit_third_only(cells, tmp_path):
    fit, val = V.split(cells)
    shipped = (K.DECODE_BW_EFF, K.STEP_OVERHEAD_S, K.LAYER_OVERHEAD_S, K.COMPUTE_SCALE)
    refit = V.fit_gpu_factors(fit)
    for got, want in zip(refit, shipped):
        assert got == pytest.approx(want, rel=0.01, abs=1e-6)
    # Poison every validation cell (x10): the split keeps them out, so the fit cannot move.
    data = json.loads(V.CELLS_FILE.read_text())
    val_ids = {c.id for c in val}
    for row in data["cells"]:
        if row["id"] in val_ids:
            row["value"] *= 10
    poisoned = tmp_path / "cells.json"
    poisoned.write_text(json.dumps(data))
    fit2, val2 = V.split(V.load_cells(poisoned))
    assert [c.id for c in fit2] == [c.id for c in fit]
    assert V.fit_gpu_factors(fit2) == pytest.approx(refit)


def test_validation_errors_meet_the_issue_goals(cells):
    _, val = V.split(cells)
    lat = [V.relative_error(c) for c in val if c.kind == "latency"]
    thr = [V.relative_error(c) for c in val if c.kind == "throughput"]
    assert len(lat) >= 10 and len(thr) >= 10
    assert V.median_abs(lat) <= 0.20
    assert V.median_abs(thr) <= 0.30


def test_unusable_cells_are_left_out(tmp_path):
    rows = [{"id": "a", "model": "llama-3.1-8b", "format": "bf16", "gpu": "h100", "gpus": 1, "metric": "sync_latency_s",
             "prompt_tokens": 256, "output_tokens": 128, "concurrency": 1, "value": 1.0, "source": "http://x"},
            {"id": "b", "model": "llama-3.1-8b", "format": "bf16", "gpu": "h100", "gpus": 1, "metric": "output_tok_s",
             "prompt_tokens": None, "output_tokens": None, "value": 1000.0, "source": "http://x"},
            {"id": "c", "model": "llama-3.1-8b", "format": "bf16", "gpu": "h100", "gpus": 1, "metric": "tpot_ms",
             "prompt_tokens": 256, "output_tokens": 128, "value": 8.0, "source": "http://x", "exclude": "doubtful"}]
    path = tmp_path / "cells.json"
    path.write_text(json.dumps({"cells": rows}))
    assert [c.id for c in V.load_cells(path)] == ["a"]
    path.write_text(json.dumps({"cells": rows[:1] * 2}))
    with pytest.raises(QuantstudyError, match="duplicate"):
        V.load_cells(path)


# -- collectives -----------------------------------------------------------------------------

def test_all_reduce_algorithm_follows_vllm():
    nv, pcie = C.LINKS["nvlink4"], C.LINKS["pcie4"]
    assert C.all_reduce_algorithm(16e3, 1, nv) == "none"
    assert C.all_reduce_algorithm(4e6, 2, pcie) == "one-shot"           # two GPUs: custom AR on any link
    assert C.all_reduce_algorithm(300e3, 4, nv) == "one-shot"           # < 512 KiB on <= 4 GPUs
    assert C.all_reduce_algorithm(300e3, 8, nv) == "two-shot"           # >= 256 KiB on 8
    assert C.all_reduce_algorithm(16e3, 4, pcie) == "nccl"              # custom AR off on > 2 PCIe GPUs
    assert C.all_reduce_algorithm(9 * 2**20, 8, nv) == "nccl"           # past the 8 MiB buffer
    for size in (1e3, 1e5, 1e6, 4e6, 16e6):
        assert C.all_reduce_s(size, 8, nv) < C.all_reduce_s(size, 8, pcie)
        assert C.all_reduce_s(size, 4, nv) < C.all_reduce_s(2 * size, 4, nv)


def test_tensor_parallel_is_sublinear_and_link_bound():
    # Splitting 70B over more GPUs speeds a decode step, but less than linearly: the per-layer
    # fixed costs and the all-reduces do not shrink.
    steps = {tp: KernelTimes(L70, "bf16", get_gpu("h100"), tp, K.GPU_FACTORS).step(1, 1024) for tp in (2, 4, 8)}
    assert steps[8] < steps[4] < steps[2]
    assert steps[8] > steps[2] / 4
    # A PCIe card pays more on the wire than an NVLink one at the same TP and load.
    a6000 = KernelTimes(L70, "w4a16", get_gpu("a6000"), 8, K.GPU_FACTORS)
    a100 = KernelTimes(L70, "w4a16", get_gpu("a100"), 8, K.GPU_FACTORS)
    assert a6000.comm(256) > 3 * a100.comm(256)
    # Across nodes, a pipeline hand-off per stage boundary is added.
    two_nodes = KernelTimes(L405, "bf16", get_gpu("h100"), 16, K.GPU_FACTORS)
    assert two_nodes.pp == 2 and two_nodes.comm(1) > KernelTimes(L405, "bf16", get_gpu("h100"), 8,
                                                                  K.GPU_FACTORS).comm(1)


# -- fixed deployments ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def node_70b():
    return [predict_deployment(L70, f, "h100", 8, "instruction-following")
            for f in ("bf16", "w8a8-fp8", "w4a16")]


def test_every_format_is_priced_on_the_same_gpus(node_70b):
    for d in node_70b:
        assert d.gpus == 8
        for p in d.curve:   # every point uses all 8 GPUs: replicas x TP
            n = p.replicas * int(p.layout.split("TP")[1].split("x")[0])
            assert n == 8, p
        # the envelope: faster requests never serve more
        lat = [p.latency_s for p in d.curve]
        rps = [p.requests_per_s for p in d.curve]
        assert lat == sorted(lat) and rps == sorted(rps)
        assert d.saturation.requests_per_s >= 0.95 * d.requests_per_s
        assert all(p.requests_per_s < 0.95 * d.requests_per_s for p in d.curve if p.latency_s < d.saturation.latency_s)
    # a lone request is fastest on the widest TP; the most throughput comes from replicas
    bf16 = node_70b[0]
    assert bf16.latency_layout == "TP8" and bf16.throughput_layout.startswith(("2x", "4x", "8x"))


def test_the_papers_crossover_w4a16_at_low_latency_w8a8_at_high_throughput(node_70b):
    bf16, fp8, w4 = node_70b
    fastest = min(d.latency_s for d in node_70b)
    winners = crossover(node_70b, [fastest * 1.01, fastest * 1.5, 100.0])
    assert winners[0][1] == "w4a16" and winners[-1][1] == "w8a8-fp8"
    assert fp8.requests_per_s > w4.requests_per_s > bf16.requests_per_s


def test_fixed_deployment_errors_are_one_line():
    with pytest.raises(QuantstudyError, match="no layout of 1 GPUs"):
        predict_deployment(L405, "bf16", "h100", 1, "rag")
    with pytest.raises(QuantstudyError, match="FP8 needs"):
        predict_deployment(L8, "fp8-block", "a100", 1, "rag")


def test_cost_rows_on_a_fixed_count_pay_for_every_gpu():
    from quantstudy.bench.cost import cost_table, price_per_hour

    rows = {r.fmt: r for r in cost_table(L70, ["bf16", "w4a16"], ["h100"], "rag", gpus=8)}
    price = price_per_hour("h100")
    for r in rows.values():
        assert r.gpus == 8 and r.usd_per_hour == pytest.approx(8 * price)
        assert r.async_queries_per_usd == pytest.approx(r.requests_per_s * 3600 / (8 * price))
        assert r.layout and r.async_layout
    # the fewest-GPU default is unchanged by the option
    default = {r.fmt: r for r in cost_table(L70, ["bf16", "w4a16"], ["h100"], "rag")}
    assert default["w4a16"].gpus == 1 and default["bf16"].gpus == 2


def test_sync_latency_on_one_gpu_equals_the_deployment_lone_request():
    d = predict_deployment(L8, "w4a16", "a6000", 1, "code-completion")
    p = predict(L8, "w4a16", "a6000", "code-completion", gpus=1)
    assert d.latency_s == pytest.approx(p.latency_s, rel=1e-9)
    assert dataclasses.asdict(d.curve[0])["concurrency"] == 1


def test_study_predict_job_prices_the_fixed_deployment_and_draws_its_curves():
    from quantstudy.results import StudyResults
    from quantstudy.study import jobs as J
    from quantstudy.study.config import parse_config

    cfg = parse_config("model: m\npredict: {hardware: [a6000], use_cases: [rag]}\n"
                       "deployment: {hardware: h100, gpus: 8, use_case: rag, mode: async}\n", "study.yaml")
    formats = ["bf16", "w8a8-fp8", "w4a16"]
    job = J.predict_job(cfg, L70, "llama-3.1-70b", formats, ["a6000"])
    out = J.do_predict(job, L70)
    fixed = [r for r in out["rows"] if r["hardware"] == "h100"]
    assert {r["fmt"] for r in fixed} == set(formats) and all(r["gpus"] == 8 for r in fixed)
    assert {r["hardware"] for r in out["rows"]} == {"a6000", "h100"}
    assert [c["fmt"] for c in out["curves"]] == formats and all(c["gpus"] == 8 for c in out["curves"])
    # the curves survive the typed results record
    results = StudyResults.from_json({"model": {"ref": "m", "name": "m"}, "predicted": out["rows"],
                                      "curves": out["curves"]})
    assert results.curves[0].points[0].concurrency == 1
    # without a fixed count, the curve is drawn on the fewest GPUs holding every format (BF16: 2)
    cfg = parse_config("model: m\ndeployment: {hardware: h100, use_case: rag}\n", "study.yaml")
    out = J.do_predict(J.predict_job(cfg, L70, "llama-3.1-70b", formats, ["h100"]), L70)
    assert {c["gpus"] for c in out["curves"]} == {2}
