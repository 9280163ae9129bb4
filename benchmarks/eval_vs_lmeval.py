"""quantstudy's scoring backend vs lm-eval's `hf` backend: same model, tasks, documents.

Each side runs in a fresh process on the float32 embedded model; the model load is not
timed. Timed: everything after it -- lm-eval's `simple_evaluate` on local copies of its own
tasks (task setup, dataset preparation, requests, scoring), and our `TASKS[...]` calls (doc
loading, requests, scoring). The model-call part alone is timed too (lm-eval's
`loglikelihood`, our backend's), and the process CPU time, which a busy shared machine
disturbs less than wall time. Prints wall times, the ratio lm-eval / ours, the largest
per-request |delta log-likelihood| and whether every item's acc / acc_norm agrees.
Target: >= 3x faster at parity (|delta| <= 1e-4, identical accuracies).

    .venv/bin/python benchmarks/eval_vs_lmeval.py [--limit 30] [--tasks arc_challenge,hellaswag,mmlu]
        [--subjects abstract_algebra,anatomy] [--lmeval-batch-size 1] [--batch-size 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def child_ours(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from quantstudy.inference.hf_engine import HFEngine
    from quantstudy.evaluate.tasks.multiple_choice import TASKS
    from quantstudy.inference.loading import load_model

    model, tokenizer, _ = load_model("smollm2-135m", dtype="float32")
    backend = HFEngine(model, tokenizer, batch_size=args.batch_size, progress=False)
    calls = _time_calls(backend, "loglikelihood")
    start, cpu = time.perf_counter(), time.process_time()
    items = {}
    for task in args.tasks:
        extra = {"subjects": args.subjects} if task == "mmlu" else {}
        items[task] = [asdict(r) for r in TASKS[task](backend, limit=args.limit, **extra)]
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
            "model_seconds": calls[0], "items": items}


def child_lmeval(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM

    from quantstudy.evaluate.lmeval_ref import run_lmeval
    from quantstudy.models import resolve_model

    folder = str(resolve_model("smollm2-135m"))
    lm = HFLM(pretrained=folder, dtype="float32", device="cpu", batch_size=args.lmeval_batch_size)
    calls = _time_calls(lm, "loglikelihood")
    with tempfile.TemporaryDirectory() as dest:
        start, cpu = time.perf_counter(), time.process_time()
        samples = run_lmeval(lm, dest, args.tasks, args.limit, args.subjects)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    keep = ("item_id", "resps", "acc", "acc_norm")
    return {"seconds": seconds, "cpu_seconds": cpu, "model_seconds": calls[0],
            "samples": {t: [{k: s[k] for k in keep if k in s} for s in ss] for t, ss in samples.items()}}


def _time_calls(obj, method: str) -> list[float]:
    """Wrap obj.method so the seconds spent inside it add up in the returned cell."""
    total = [0.0]
    inner = getattr(obj, method)

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            total[0] += time.perf_counter() - t

    setattr(obj, method, timed)
    return total


def run_child(side: str, argv: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, __file__, "--child", side, "--out", out.name, *argv], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if side == "lmeval" else None)
        return json.loads(open(out.name).read())


def compare(ours: dict, theirs: dict) -> dict:
    from quantstudy.evaluate.lmeval_ref import compare as compare_items
    from quantstudy.items import ItemResult

    report = {}
    for task, items in ours["items"].items():
        report[task] = compare_items([ItemResult(**r) for r in items], theirs["samples"][task])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=30, help="documents per task (per MMLU subject)")
    parser.add_argument("--tasks", default="arc_challenge,hellaswag,mmlu")
    parser.add_argument("--subjects", default="abstract_algebra,anatomy", help="MMLU subjects (5-shot)")
    parser.add_argument("--batch-size", type=int, default=32, help="ours: rows per forward")
    parser.add_argument("--lmeval-batch-size", type=int, default=1, help="lm-eval's (its default is 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["ours", "lmeval"])
    parser.add_argument("--out")
    args = parser.parse_args()
    args.tasks = args.tasks.split(",")
    args.subjects = args.subjects.split(",")
    if args.child:
        result = (child_ours if args.child == "ours" else child_lmeval)(args)
        with open(args.out, "w") as fh:
            json.dump(result, fh)
        return
    argv = [a for a in sys.argv[1:]]
    theirs = run_child("lmeval", argv)
    ours = run_child("ours", argv)
    report = compare(ours, theirs)
    print(f"tasks {','.join(args.tasks)} (MMLU subjects {','.join(args.subjects)}, 5-shot), limit {args.limit}, "
          f"{args.threads} threads, lm-eval batch {args.lmeval_batch_size}, ours batch {args.batch_size}")
    for task, r in report.items():
        acc = {m: round(v, 4) for m, v in r["lmeval"].items()}
        print(f"  {task:14s} items {r['items']:4d} requests {r['requests']:5d}  max|dloglik| "
              f"{r['max_abs_dloglik']:.2e}  metric mismatches {len(r['metric_diffs'])}  lm-eval {acc}")
    total, model = theirs["seconds"] / ours["seconds"], theirs["model_seconds"] / ours["model_seconds"]
    print(f"  end-to-end  lm-eval {theirs['seconds']:7.1f} s   ours {ours['seconds']:6.1f} s   ratio {total:.2f}x")
    print(f"  CPU time    lm-eval {theirs['cpu_seconds']:7.1f} s   ours {ours['cpu_seconds']:6.1f} s   "
          f"ratio {theirs['cpu_seconds'] / ours['cpu_seconds']:.2f}x  (all threads; steadier than wall on a busy machine)")
    print(f"  model calls lm-eval {theirs['model_seconds']:7.1f} s   ours {ours['model_seconds']:6.1f} s   "
          f"ratio {model:.2f}x")
    parity = all(r["max_abs_dloglik"] <= 1e-4 and not r["metric_diffs"] for r in report.values())
    print(f"  parity (|d| <= 1e-4, equal acc/acc_norm): {'yes' if parity else 'NO'}")


if __name__ == "__main__":
    main()
