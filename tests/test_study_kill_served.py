"""kill -9 of the study process alone -- not its group -- while its bench has a server up.

The server runs in a session of its own (so a terminal's Ctrl-C reaches the study first), so
nothing but the study's own watchdog can end it when the study dies without running any
cleanup. The engine here is the tests' stand-in for vLLM (`fake_vllm`), which behaves like it
where it matters: an OpenAI-style streaming server counting prompt tokens with the checkpoint's
tokenizer, with a child that ignores its parent's death (as vLLM's EngineCore does).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_vllm import FAKE_SERVER
from study_runs import TINY, comparable, log_events, run_study, store_snapshot



def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def servers(pids_file: Path) -> list[int]:
    if not pids_file.exists():
        return []
    return [int(p) for line in pids_file.read_text().splitlines() for p in line.split()]


@pytest.mark.slow
def test_sigkill_of_the_study_process_alone_during_bench_leaves_no_server(tiny_study, tmp_path):
    cfg, reference, _ = tiny_study
    out = tmp_path / "study"
    shutil.copytree(reference, out)            # quantize, evaluate and compare are done: bench is next
    engine = tmp_path / "engine-python"
    engine.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    engine.chmod(0o755)
    bench_cfg = tmp_path / "bench.yaml"
    bench_cfg.write_text(TINY.replace("bench: false", f"bench: {{scale: 0.125, requests: 2, vllm_python: {engine}}}"))
    pids = tmp_path / "pids"
    fake = {"FAKE_PIDS": str(pids), "FAKE_PIDS_APPEND": "1", "FAKE_TOKENIZER": "1", "TMPDIR": str(tmp_path)}
    env = {**os.environ, **fake, "FAKE_FIRST": "1.0"}
    before = store_snapshot(out)

    with open(tmp_path / "stderr.txt", "w") as err:
        study = subprocess.Popen([sys.executable, "-m", "quantstudy.cli", "study", str(bench_cfg), "--out", str(out)],
                                 stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        deadline = time.monotonic() + 300
        # a server is up and serving: it wrote its pids, and the study is past its health check
        while study.poll() is None and time.monotonic() < deadline and not (
                servers(pids) and any(e["event"] == "run" and e["job"].startswith("bench")
                                      for e in log_events(out)[len(log_events(reference)):])):
            time.sleep(0.05)
        time.sleep(2.0)                        # inside the first request (1 s to its first token)
        assert study.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
        started = servers(pids)
        assert started and all(alive(p) for p in started)
        os.kill(study.pid, signal.SIGKILL)     # the study process only: its group is not signalled
        study.wait()

    deadline = time.monotonic() + 30
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in started if alive(p)]
    for p in left:                             # so a failure leaves nothing behind either
        os.kill(p, signal.SIGKILL)
    assert left == [], "the server (or its engine child) outlived the killed study"
    after = store_snapshot(out)
    assert all(after.get(k) == v for k, v in before.items()), "a finished job was lost"

    final = run_study(bench_cfg, out, env={**fake, "FAKE_FIRST": "0.05"})
    assert final.returncode == 0, final.stderr[-3000:]
    assert not [p for p in servers(pids) if alive(p)]     # the rerun's servers are stopped too
    results = comparable(out, reference)
    assert len(results["bench"]["measured"]) >= 3 and not results["failures"]
    expected = comparable(reference)
    for section in ("variants", "evaluate", "compare"):
        assert results[section] == expected[section], section
    new = log_events(out)[len(log_events(reference)):]          # the copy's log starts with the reference's
    assert not any(e["event"] == "run" and e["job"].startswith(("quantize", "evaluate", "compare")) for e in new)
