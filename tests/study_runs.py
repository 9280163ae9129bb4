"""Running `quantstudy study` in subprocesses on the tiny study, and reading what it left:
shared by the orchestrator tests (tests/test_study.py) and the kill tests."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

# Two RTN variants, ARC-Challenge + perplexity on 4 items, 2 compare prompts x 16 tokens, no bench.
TINY = """\
model: smollm2-135m
variants:
  - {name: w8a8-fp8, scheme: w8a8-fp8, algorithm: rtn}
  - {name: w4a16-rtn, scheme: w4a16, algorithm: rtn}
evaluate: {tasks: [arc_challenge, ppl], limit: 4, fewshot: zero}
compare: {limit: 2, max_new_tokens: 16}
bench: false
predict: {hardware: [a6000], use_cases: [instruction-following]}
deployment: {hardware: a6000, min_recovery: 0.9}
engine: hf
"""


def run_study(cfg: Path, out: Path, *args, env=None, timeout=1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantstudy.cli", "study", str(cfg), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def comparable(out: Path, *moved_from: Path) -> dict:
    """results.json without what legitimately differs between two runs of one study: the study
    folder's path (and where it was copied from) and the time the study was first started."""
    text = (out / "results.json").read_text()
    for folder in (out, *moved_from):
        text = text.replace(str(folder.resolve()), "<out>")
    data = json.loads(text)
    data["provenance"].pop("started")
    return data


def log_events(out: Path) -> list[dict]:
    events = []
    for line in (out / "jobs.log").read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:   # the line a kill cut short
            pass
    return events


def store_snapshot(out: Path) -> dict:
    """Every stored job result and evaluated item with the time it was written, and the
    modification times of finished checkpoints' files: a recomputation changes them."""
    path = out / "study.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=60)
    try:
        snap = {("result", k): c for k, c in db.execute("SELECT key, created FROM results")}
        snap.update({("item", *row[:4]): row[4] for row in db.execute(
            "SELECT model, task, task_version, item_id, created FROM items")})
        for (result,) in db.execute("SELECT result FROM results WHERE kind='study:quantize'"):
            folder = out / json.loads(result)["folder"]
            snap.update({("file", str(f)): f.stat().st_mtime_ns for f in folder.iterdir()})
    finally:
        db.close()
    return snap
