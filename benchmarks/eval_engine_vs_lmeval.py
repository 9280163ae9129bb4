"""quantstudy's served engine (`VLLMEngine`) vs lm-eval's `local-completions` on vLLM.

The same documents (ARC-Challenge, HellaSwag, MMLU 2 subjects 5-shot; limit 30) scored through
the same vLLM server configuration: each side gets a freshly started server (so neither
inherits the other's prefix cache) and a few warm-up requests before its clock starts.
lm-eval runs at each of `--lmeval-concurrency` and its best time counts. Timed: everything
after the warm-up -- lm-eval's `simple_evaluate` on local copies of its own tasks, and our
task calls (documents, requests, scoring). Prints both times, the ratio lm-eval / ours (goal
>= 2x), the largest per-request |delta log-likelihood| and the accuracy mismatches (bf16 vLLM
is not batch-invariant: both are expected within the server's own variation, which
tests/test_vllm_engine.py measures).

    .venv/bin/python benchmarks/eval_engine_vs_lmeval.py [--limit 30] [--lmeval-concurrency 1,4,16]
        [--concurrency 16] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import asdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _warm(url: str, tokenizer) -> None:
    from quantstudy.inference.requests import LoglikRequest
    from quantstudy.inference.vllm_engine import VLLMEngine

    VLLMEngine(url, "m", tokenizer, progress=False).loglikelihood(
        [LoglikRequest(f"Warm-up sentence number {i} for the", " server") for i in range(8)])


def ours(folder, tokenizer, args) -> tuple[float, dict]:
    from quantstudy.evaluate.tasks.multiple_choice import TASKS
    from quantstudy.inference.vllm_engine import VLLMEngine
    from quantstudy.inference.vllm_server import VLLMServer

    with VLLMServer(folder, "m") as server:
        _warm(server.url, tokenizer)
        engine = VLLMEngine(server.url, "m", tokenizer, concurrency=args.concurrency, progress=False)
        start = time.perf_counter()
        items = {}
        for task in args.tasks:
            extra = {"subjects": args.subjects} if task == "mmlu" else {}
            items[task] = [asdict(r) for r in TASKS[task](engine, limit=args.limit, **extra)]
        return time.perf_counter() - start, items


def lmeval(folder, tokenizer, args, concurrency: int) -> tuple[float, dict]:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from quantstudy.evaluate.lmeval_ref import run_lmeval
    from quantstudy.inference.vllm_server import VLLMServer

    with VLLMServer(folder, "m") as server, tempfile.TemporaryDirectory() as dest:
        _warm(server.url, tokenizer)
        start = time.perf_counter()
        lm = LocalCompletionsAPI(model="m", base_url=f"{server.url}/v1/completions", tokenizer=str(folder),
                                 tokenizer_backend="huggingface", tokenized_requests=True,
                                 num_concurrent=concurrency, max_retries=1)
        samples = run_lmeval(lm, dest, args.tasks, args.limit, args.subjects)
        return time.perf_counter() - start, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=30, help="documents per task (per MMLU subject)")
    parser.add_argument("--tasks", default="arc_challenge,hellaswag,mmlu")
    parser.add_argument("--subjects", default="abstract_algebra,anatomy", help="MMLU subjects (5-shot)")
    parser.add_argument("--concurrency", type=int, default=16, help="ours: requests in flight")
    parser.add_argument("--lmeval-concurrency", default="1,4,16", help="lm-eval's num_concurrent values to try")
    args = parser.parse_args()
    args.tasks, args.subjects = args.tasks.split(","), args.subjects.split(",")

    from transformers import AutoTokenizer

    from quantstudy.evaluate.lmeval_ref import compare
    from quantstudy.items import ItemResult
    from quantstudy.models import resolve_model

    folder = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ours_s, items = ours(folder, tokenizer, args)
    theirs = {}
    for c in map(int, args.lmeval_concurrency.split(",")):
        theirs[c] = lmeval(folder, tokenizer, args, c)
        print(f"  lm-eval local-completions num_concurrent={c:<3d} {theirs[c][0]:7.1f} s", flush=True)
    best = min(theirs, key=lambda c: theirs[c][0])
    best_s, samples = theirs[best]
    print(f"tasks {','.join(args.tasks)} (MMLU {','.join(args.subjects)}, 5-shot), limit {args.limit}, "
          f"vLLM {args.model} bf16, ours concurrency {args.concurrency}")
    for task in args.tasks:
        r = compare([ItemResult(**x) for x in items[task]], samples[task])
        print(f"  {task:14s} items {r['items']:4d} requests {r['requests']:5d}  max|dloglik| "
              f"{r['max_abs_dloglik']:.2e}  accuracy mismatches {len(r['metric_diffs'])}")
    print(f"  end-to-end  lm-eval (best, num_concurrent={best}) {best_s:7.1f} s   ours {ours_s:6.1f} s   "
          f"ratio {best_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
