"""quantstudy's served engine (`VLLMEngine`) vs lm-eval's `local-completions` on vLLM.

The same documents (ARC-Challenge, HellaSwag, MMLU 2 subjects 5-shot; limit 30) scored through
the same vLLM server, with prefix caching off as our evaluation runs it (so no side inherits
the other's cache), after a few warm-up requests. With `--prefix-cache` each side gets a fresh
server with the cache on instead. lm-eval runs at each of `--lmeval-concurrency` and its best
time counts. Timed: everything
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
import contextlib
import os
import tempfile
import time
from dataclasses import asdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@contextlib.contextmanager
def _server(shared_url, args):
    """The shared server's url, or (prefix cache on) a fresh server's, warmed up."""
    if shared_url is not None:
        yield shared_url
        return
    from quantstudy.inference.vllm_server import VLLMServer

    with VLLMServer(args.folder, "m") as server:
        _warm(server.url, args.tokenizer)
        yield server.url


def _warm(url: str, tokenizer) -> None:
    from quantstudy.inference.requests import LoglikRequest
    from quantstudy.inference.vllm_engine import VLLMEngine

    VLLMEngine(url, "m", tokenizer, progress=False).loglikelihood(
        [LoglikRequest(f"Warm-up sentence number {i} for the", " server") for i in range(8)])


def ours(url, tokenizer, args) -> tuple[float, dict]:
    from quantstudy.evaluate.tasks.multiple_choice import TASKS
    from quantstudy.inference.vllm_engine import VLLMEngine

    with _server(url, args) as url:
        engine = VLLMEngine(url, "m", tokenizer, concurrency=args.concurrency, progress=False)
        start = time.perf_counter()
        items = {}
        for task in args.tasks:
            extra = {"subjects": args.subjects} if task == "mmlu" else {}
            items[task] = [asdict(r) for r in TASKS[task](engine, limit=args.limit, **extra)]
        return time.perf_counter() - start, items


def lmeval(url, tokenizer, args, concurrency: int) -> tuple[float, dict]:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from quantstudy.evaluate.lmeval_ref import run_lmeval

    with _server(url, args) as url, tempfile.TemporaryDirectory() as dest:
        start = time.perf_counter()
        lm = LocalCompletionsAPI(model="m", base_url=f"{url}/v1/completions", tokenizer=str(args.folder),
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
    parser.add_argument("--prefix-cache", action="store_true", help="a fresh server per side, prefix cache on")
    args = parser.parse_args()
    args.tasks, args.subjects = args.tasks.split(","), args.subjects.split(",")

    from transformers import AutoTokenizer

    from quantstudy.evaluate.lmeval_ref import compare
    from quantstudy.items import ItemResult
    from quantstudy.models import resolve_model

    from quantstudy.inference.vllm_server import VLLMServer

    args.folder = resolve_model(args.model)
    tokenizer = args.tokenizer = AutoTokenizer.from_pretrained(args.folder)
    with contextlib.ExitStack() as stack:
        shared = None
        if not args.prefix_cache:
            server = stack.enter_context(VLLMServer(args.folder, "m", extra_args=["--no-enable-prefix-caching"]))
            _warm(server.url, tokenizer)
            shared = server.url
        ours_s, items = ours(shared, tokenizer, args)
        print(f"  ours (VLLMEngine) concurrency={args.concurrency:<3d}       {ours_s:7.1f} s", flush=True)
        theirs = {}
        for c in map(int, args.lmeval_concurrency.split(",")):
            theirs[c] = lmeval(shared, tokenizer, args, c)
            print(f"  lm-eval local-completions num_concurrent={c:<3d} {theirs[c][0]:7.1f} s", flush=True)
    best = min(theirs, key=lambda c: theirs[c][0])
    best_s, samples = theirs[best]
    print(f"tasks {','.join(args.tasks)} (MMLU {','.join(args.subjects)}, 5-shot), limit {args.limit}, "
          f"vLLM {args.model} bf16, prefix cache {'on' if args.prefix_cache else 'off'}, "
          f"ours concurrency {args.concurrency}")
    for task in args.tasks:
        r = compare([ItemResult(**x) for x in items[task]], samples[task])
        print(f"  {task:14s} items {r['items']:4d} requests {r['requests']:5d}  max|dloglik| "
              f"{r['max_abs_dloglik']:.2e}  accuracy mismatches {len(r['metric_diffs'])}")
    print(f"  end-to-end  lm-eval (best, num_concurrent={best}) {best_s:7.1f} s   ours {ours_s:6.1f} s   "
          f"ratio {best_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
