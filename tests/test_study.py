"""The study orchestrator: config errors, job keys, kill -9 resume, Ray = local, stage failures.

The slow tests run `quantstudy study` in subprocesses on a tiny study (two RTN variants,
ARC-Challenge + perplexity on 4 items, 2 compare prompts x 16 tokens, no bench) and compare
each outcome with one uninterrupted local run: results.json with the study folder's path and
the start time taken out must be equal, and the store must show that nothing finished was
ever computed twice.
"""

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantstudy.errors import QuantstudyError
from quantstudy.study.config import StudyConfig, parse_config
from quantstudy.study.jobs import auto_group_size, quantize_job
from study_runs import TINY, comparable, log_events, run_study, store_snapshot



# ---- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, pattern", [
    ("model: m\nvariants:\n  - {name: a, scheme: w4a16}\n  - name: b\n    scheme: w5a5\n", 5,
     r"variants\[1\]\.scheme: unknown scheme 'w5a5'; choose one of: w8a8-fp8, "),
    ("variants:\n  - {name: a, scheme: w4a16}\n", 1, r"missing field 'model'"),
    ("model: m\nevaluate:\n  tasks: [ppl]\n  limit: -3\n", 4, r"evaluate\.limit: must be an integer >= 1 or null, got -3"),
    ("model: m\nevaluate:\n  tasks: [ppl\n  limit: 3\n", 4, r"YAML syntax error: "),
    ("model: m\nbench:\n  use_cases: [rag]\n  requets: 3\n", 4, r"bench\.requets: unknown field \(did you mean 'requests'\?\)"),
    ("model: m\nevalute: {limit: 3}\n", 2, r"evalute: unknown field \(did you mean 'evaluate'\?\)"),
    ("model: m\ncompare: {limit: 0}\n", 2, r"compare\.limit: must be an integer >= 1"),
    ("model: m\nmodel: n\n", 2, r"model: given twice"),
    ("model: m\nevaluate:\n  until_decided: true\n  round: many\n", 4, r"evaluate\.round: must be an integer >= 10"),
    ("model: m\nevaluate: {until_decided: yes please}\n", 2, r"evaluate\.until_decided: must be true or false"),
    ("model: m\nevaluate: {twin: 1}\n", 2, r"evaluate\.twin: must be true or false"),
    ("model: m\ndeployment: {hardware: h100, gpus: 0}\n", 2, r"deployment\.gpus: must be an integer >= 1"),
])
def test_config_errors_are_one_line_naming_file_line_and_field(text, line, pattern):
    with pytest.raises(QuantstudyError) as err:
        parse_config(text, "study.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"study.yaml line {line}: "), message
    assert __import__("re").search(pattern, message), message


def test_cli_prints_a_config_error_as_one_line_and_exits_2(tmp_path):
    from typer.testing import CliRunner

    from quantstudy.cli import app

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: smollm2-135m\nvariants:\n  - {name: x, scheme: w5a5}\n")
    result = CliRunner().invoke(app, ["study", str(cfg), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad.yaml line 3: variants[0].scheme: unknown scheme 'w5a5'" in lines[0]
    assert not (tmp_path / "out").exists()   # a config error costs nothing


def test_partial_sections_keep_the_study_defaults():
    cfg = parse_config("model: m\ncalibration: {source: wikitext, seed: 3}\nevaluate: {limit: 7}\n")
    assert (cfg.calibration.source, cfg.calibration.seed) == ("wikitext", 3)
    assert (cfg.calibration.num_samples, cfg.calibration.seq_len) == (16, 256)   # the study's, not the CLI's
    assert cfg.evaluate.limit == 7 and cfg.evaluate.tasks == StudyConfig().evaluate.tasks
    with pytest.raises(QuantstudyError, match=r"^study.yaml line 2: calibration\.source: unknown calibration source"):
        parse_config("model: m\ncalibration: {source: nope}\n")


def test_a_missing_model_is_one_line_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from quantstudy.cli import app

    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"model: {tmp_path / 'no-such-model'}\n")
    result = CliRunner().invoke(app, ["study", str(cfg), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no-such-model' not found" in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_defaults_are_the_papers_grid():
    cfg = StudyConfig()
    grid = {(v.scheme, v.algorithm, v.smoothquant) for v in cfg.variants}
    assert grid == {("w8a8-fp8", "rtn", None), ("w8a8-int8", "gptq", 0.8), ("w4a16", "gptq", None),
                    ("w4a16", "awq", None), ("w4a16", "rtn", None)}
    assert cfg.evaluate.limit and cfg.compare and cfg.bench and cfg.deployment
    # the paper's group 128 where widths allow; SmolLM2's 576 / 1536 need 64
    assert auto_group_size({"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                            "head_dim": 64}) == 64
    assert auto_group_size({"hidden_size": 4096, "intermediate_size": 14336}) == 128


def test_job_keys_hash_inputs_not_paths():
    smol = {"hidden_size": 576, "intermediate_size": 1536}
    to_gptq = ("algorithm: rtn}\n  - {name: w4a16-rtn", "algorithm: gptq}\n  - {name: w4a16-rtn")

    def keys(text, out="/a", fp="fp0"):
        c = parse_config(text)
        return [quantize_job(v, c, fp, "smollm2-135m", Path("/src"), Path(out), smol).key for v in c.variants]

    assert keys(TINY) == keys(TINY, "/b")                     # a moved study finds its results
    assert keys(TINY, fp="fp1") != keys(TINY)                 # other weights, other results
    gptq = TINY.replace(*to_gptq)
    assert keys(gptq)[0] != keys(TINY)[0] and keys(gptq)[1] == keys(TINY)[1]
    # calibration is an input of calibrated recipes only
    seeded = "calibration: {seed: 7}\n"
    assert keys(TINY + seeded) == keys(TINY)
    assert keys(gptq + seeded)[0] != keys(gptq)[0]


def test_bench_jobs_load_native_formats_and_only_time_emulated_ones():
    from quantstudy.bench.plan import plan_run
    from quantstudy.study.jobs import bench_job

    cfg = StudyConfig()
    hw = {"name": "cpu", "host": "h", "cpu": "c"}
    b = cfg.bench

    def job(name, folder, fmt, hardware, status, reason):
        run = plan_run(name, folder, fmt, status, reason, b.modes, b.requests, b.concurrency, b.fallback_requests)
        return bench_job(cfg, run, "fp", hardware)

    native = job("w8a8-int8", Path("/x"), "w8a8-int8", hw, "native", "")
    assert native.inputs["modes"] == ["synchronous", "concurrent"]
    assert native.inputs["requests"] == {"synchronous": 4, "concurrent": 8}   # the batch of 4 fills twice
    emulated = job("w8a8-fp8", Path("/x"), "w8a8-fp8", hw, "fallback", "r")
    assert emulated.inputs["modes"] == ["synchronous"] and emulated.inputs["requests"] == {"synchronous": 1}
    moved = job("w8a8-int8", Path("/elsewhere"), "w8a8-int8", hw, "native", "")
    assert moved.key == native.key   # the folder is not an input; the host is
    assert job("w8a8-int8", Path("/x"), "w8a8-int8", {**hw, "host": "other"}, "native", "").key != native.key


# ---- running studies ----------------------------------------------------------------------------

@pytest.fixture
def tiny(tiny_study):
    return tiny_study


@pytest.mark.slow
def test_uninterrupted_study_writes_report_and_rerun_recomputes_nothing(tiny):
    cfg, out, first = tiny
    results = json.loads((out / "results.json").read_text())
    assert [v["name"] for v in results["variants"]] == ["w8a8-fp8", "w4a16-rtn"]
    assert set(results["evaluate"]["tasks"]) == {"arc_challenge", "ppl"} and results["compare"]["variants"]
    assert results["recommendation"]["chosen"] and not results["failures"]
    assert (out / "report" / "report.html").is_file() and "report.html" in first.stdout
    assert results["recommendation"]["explanation"].split(" ")[0] in first.stdout.replace("\n", " ")
    before = store_snapshot(out)
    files = {name: (out / name).read_bytes() for name in ("results.json", "report/report.html")}
    again = run_study(cfg, out)
    assert again.returncode == 0
    assert store_snapshot(out) == before
    assert {name: (out / name).read_bytes() for name in files} == files    # the same report, byte for byte
    runs = [e for e in log_events(out) if e["event"] == "run"]
    assert len(runs) == len({e["key"] for e in runs})            # the rerun started no job


def _started(out: Path, stage: str, since: float) -> bool:
    return (out / "jobs.log").exists() and any(
        e["event"] == "run" and e["job"].startswith(stage) and e["t"] >= since for e in log_events(out))


@pytest.mark.slow
def test_sigkill_during_each_stage_and_at_random_loses_and_recomputes_nothing(tiny, tmp_path):
    """kill -9 of the whole group as each stage's first job starts (quantize, evaluate,
    compare: three kills for sure), then once at a random time; nothing finished is lost or
    redone, and the finished study equals the uninterrupted one."""
    cfg, reference, _ = tiny
    out = tmp_path / "killed"
    seed = int(os.environ.get("QS_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    kills = []
    for stage in ("quantize", "evaluate", "compare", None):
        before = store_snapshot(out)
        with open(tmp_path / "stderr.txt", "a") as err:
            since = time.time()
            proc = subprocess.Popen([sys.executable, "-m", "quantstudy.cli", "study", str(cfg), "--out", str(out)],
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            deadline = time.monotonic() + (rng.uniform(4, 30) if stage is None else 300)
            while proc.poll() is None and time.monotonic() < deadline and not (stage and _started(out, stage, since)):
                time.sleep(0.05)
            if stage:
                time.sleep(rng.uniform(0, 0.5))   # somewhere inside the job
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills.append(stage or "random")
        after = store_snapshot(out)
        lost_or_redone = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
        assert not lost_or_redone, f"seed {seed}: {lost_or_redone}"
    assert kills[:3] == ["quantize", "evaluate", "compare"], f"seed {seed}: {kills}"
    before = store_snapshot(out)
    final = run_study(cfg, out)
    assert final.returncode == 0, final.stderr[-3000:]
    after = store_snapshot(out)
    assert all(after.get(k) == v for k, v in before.items()), f"seed {seed}"
    done = [e["key"] for e in log_events(out) if e["event"] == "done"]
    assert len(done) == len(set(done)), f"seed {seed}: a finished job ran again"
    assert comparable(out) == comparable(reference), f"seed {seed}"


@pytest.mark.slow
def test_ray_executor_gives_the_local_results(tiny, tmp_path):
    pytest.importorskip("ray")
    cfg, reference, _ = tiny
    out = tmp_path / "ray"
    result = run_study(cfg, out, "--executor", "ray")
    assert result.returncode == 0, result.stderr[-3000:]
    assert comparable(out) == comparable(reference)
    db = sqlite3.connect(out / "study.sqlite")
    prov = [json.loads(p) for (p,) in db.execute("SELECT provenance FROM results WHERE kind='study:quantize'")]
    db.close()
    assert len(prov) == 2 and all(p["executor"] == "ray" for p in prov)


@pytest.mark.slow
def test_failing_stage_is_one_line_and_keeps_the_rest(tiny, tmp_path):
    cfg, reference, _ = tiny
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    # a damaged checkpoint is quantized again; RTN is deterministic, so nothing downstream changes
    (out / "checkpoints" / "w4a16-rtn" / "model.safetensors").unlink()
    fake = tmp_path / "fake-vllm"
    fake.write_text("#!/bin/sh\necho 'RuntimeError: this engine never starts' >&2\nexit 1\n")
    fake.chmod(0o755)
    bench_cfg = tmp_path / "bench.yaml"
    bench_cfg.write_text(TINY.replace("bench: false", f"bench: {{scale: 0.125, requests: 1, vllm_python: {fake}}}"))
    result = run_study(bench_cfg, out)
    assert result.returncode == 1
    failed = [ln for ln in result.stderr.splitlines() if ln.startswith("✗")]
    assert [ln.split(":")[0] for ln in failed] == ["✗ bench baseline", "✗ bench w8a8-fp8", "✗ bench w4a16-rtn"]
    assert all("this engine never starts" in ln for ln in failed), failed
    assert "3 job(s) failed" in result.stderr.splitlines()[-1]
    results = comparable(out, reference)
    expected = comparable(reference)
    for section in ("variants", "evaluate", "compare", "predicted"):
        assert results[section] == expected[section], section
    assert [f["stage"] for f in results["failures"]] == ["bench"] * 3
    assert results["bench"]["measured"] == []
    assert "FAILED — performance" in (out / "report" / "report.html").read_text()
    runs = [e["job"] for e in log_events(out) if e["event"] == "run"]   # the reference's log came along
    assert runs.count("quantize w4a16-rtn") == 2 and runs.count("quantize w8a8-fp8") == 1
    assert runs.count("evaluate") == 1 and runs.count("compare") == 1


@pytest.mark.slow
def test_quantize_job_adopts_its_own_finished_checkpoint_and_replaces_anything_else(smollm2, tmp_path):
    from quantstudy.study.jobs import do_quantize, marker_path

    cfg = parse_config(TINY)
    model, tokenizer, folder = smollm2
    config = json.loads((Path(folder) / "config.json").read_text())
    job = quantize_job(cfg.variants[0], cfg, "fp", "smollm2-135m", Path(folder), tmp_path, config)
    first = do_quantize(job.key, job.spec)
    ckpt = tmp_path / "checkpoints" / "w8a8-fp8"
    stamp = {f.name: f.stat().st_mtime_ns for f in ckpt.iterdir()}
    # killed after the atomic write but before the store write: the rerun adopts the folder
    again = do_quantize(job.key, job.spec)
    assert again.pop("adopted") and not first.pop("adopted") and again == first
    assert {f.name: f.stat().st_mtime_ns for f in ckpt.iterdir()} == stamp
    # a folder some other job (or config) left behind is not trusted
    marker_path(ckpt).write_text("another-job")
    third = do_quantize(job.key, job.spec)
    assert not third.pop("adopted") and third == first
    assert marker_path(ckpt).read_text() == job.key


def test_a_worker_that_cannot_see_the_study_folder_says_so_in_one_line(tmp_path):
    from quantstudy.study.jobs import do_quantize

    cfg = parse_config(TINY)
    job = quantize_job(cfg.variants[0], cfg, "fp", "smollm2-135m", tmp_path, tmp_path, {"hidden_size": 576})
    with pytest.raises(QuantstudyError, match="study folder is not visible from .* shared|every node mounts"):
        do_quantize(job.key, {**job.spec, "probe": str(tmp_path / "elsewhere" / "study.sqlite")})
    assert not (tmp_path / "checkpoints").exists()   # nothing written


@pytest.mark.slow
def test_report_opens_in_chromium_with_every_section_filled(tiny):
    """A reader's view: the tiny study's report in headless Chromium, screenshot kept under
    runs/test-artifacts/. Every section has its tables and decoded figures; the only
    placeholder is measured performance, which the tiny study does not run (bench: false);
    `make study` checks the full report, bench included, the same way."""
    from quantstudy.report.browser import FULL_STUDY, check_report, find_chromium

    if find_chromium() is None or os.environ.get("QUANTSTUDY_NO_BROWSER"):
        if os.environ.get("CI") and not os.environ.get("QUANTSTUDY_NO_BROWSER"):
            pytest.fail("CI without Chromium: .ci/run installs it")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    _, out, _ = tiny
    shot = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts" / "tiny-study-report.png"
    expect = {**FULL_STUDY, "performance": {"tables": 1, "missing": True}}
    check = check_report(out / "report" / "report.html", shot, expect)
    assert check.ok, check.problems
    views = {s.id: s for s in check.sections}
    assert list(views) == list(FULL_STUDY)
    assert views["performance"].missing == ["Not run in this study."]   # measured: bench was off
    assert all(not v.missing for k, v in views.items() if k != "performance")
    assert shot.stat().st_size > 50_000   # a full page, not a blank one


@pytest.mark.slow
def test_report_rebuilds_from_the_store_alone(tiny, tmp_path):
    from typer.testing import CliRunner

    from quantstudy.cli import app

    _, out, _ = tiny
    only = tmp_path / "store-only"
    only.mkdir()
    shutil.copyfile(out / "study.sqlite", only / "study.sqlite")   # no checkpoints, no results.json
    result = CliRunner().invoke(app, ["report", str(only)])
    assert result.exit_code == 0, result.output
    assert (only / "report" / "report.html").read_bytes() == (out / "report" / "report.html").read_bytes()
    assert json.loads((only / "report" / "results.json").read_text()) == json.loads((out / "results.json").read_text())
    empty = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert empty.exit_code == 2 and "no study folder, store or results file" in empty.output


@pytest.mark.slow
def test_recommend_answers_other_deployments_from_the_store(tiny):
    """`quantstudy recommend`: the study's own deployment gives the report's decision; three
    other deployments give three stated decisions, each the cheapest candidate meeting the
    floor on evidence, with hardware the study never predicted computed on the fly."""
    from typer.testing import CliRunner

    from quantstudy.cli import app

    cfg, out, _ = tiny
    stored = json.loads((out / "results.json").read_text())["recommendation"]
    rerun = CliRunner().invoke(app, ["study", str(cfg), "--out", str(out), "--json"])   # nothing left to do
    assert rerun.exit_code == 0 and json.loads(rerun.stdout)["recommendation"] == stored
    same = CliRunner().invoke(app, ["recommend", str(out), "--json"])
    assert same.exit_code == 0, same.output
    assert {k: json.loads(same.stdout)[k] for k in ("chosen", "ranking", "explanation")} == \
        {k: stored[k] for k in ("chosen", "ranking", "explanation")}
    for args in (["--hardware", "h100", "--mode", "async"],
                 ["--hardware", "b200", "--use-case", "code-completion", "--min-recovery", "0.9"],
                 ["--hardware", "a6000", "--latency-slo", "0.000001"]):
        got = CliRunner().invoke(app, ["recommend", str(out), *args, "--json"])
        assert got.exit_code == 0, got.output
        rec = json.loads(got.stdout)
        assert rec["deployment"]["hardware"] == args[1] and rec["explanation"]
        feasible = [c for c in rec["candidates"] if c["feasible"]]
        if rec["chosen"] is None:
            assert not feasible and all(c["reasons"] for c in rec["candidates"]) and "SLO" in rec["explanation"]
            continue
        chosen = next(c for c in rec["candidates"] if c["name"] == rec["chosen"])
        assert chosen["feasible"] and chosen["decided_by"] in ("accuracy", "fidelity")
        assert all(c["queries_per_usd"] <= chosen["queries_per_usd"] * (1 + 1e-6) for c in feasible)
        assert rec["ranking"][0] == rec["chosen"]
    table = CliRunner().invoke(app, ["recommend", str(out), "--hardware", "h100"])
    assert table.exit_code == 0 and "decision" in table.stdout and "meets" in table.stdout
    bad = CliRunner().invoke(app, ["recommend", str(out), "--hardware", "tpu-v9"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output and len(bad.output.strip().splitlines()) <= 2
