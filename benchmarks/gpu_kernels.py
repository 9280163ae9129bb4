"""Quantized linear layers on a GPU against BF16 and against the roofline.

For the fused linear shapes of Llama-3.1-8B and 70B (qkv, o, gate_up, down, as vLLM runs
them) and token counts 1..4096, each format (BF16 cuBLAS, FP8 W8A8 `torch._scaled_mm`,
INT8 W8A8 `torch._int_mm` + scaling, W4A16 with our Triton kernel and with PyTorch's
tinygemm) is first checked against a float64 product of the same operands, then timed:
CUDA-graph replays of many calls (launch gaps out, as vLLM's decode graphs do), CUDA
events, median of 15 replays, rotating among enough weight copies that the L2 cache
cannot hold them. Each cell reports achieved TB/s and TFLOP/s and the fraction of the
datasheet roofline; the summary gives speedups vs BF16, the winning format per cell,
and the efficiencies the roofline model uses (written with --record).

    python benchmarks/gpu_kernels.py --out DIR [--record FILE]    # on a GPU machine
    python benchmarks/gpu_kernels.py --cpu                         # tiny shapes, correctness only

Activation quantization (dynamic per token) is our one-pass Triton kernel and is timed
inside the W8A8 formats ('total'); the GEMM alone is reported beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from quantstudy.hardware import get_gpu  # noqa: E402
from quantstudy.kernels.linear import (FORMATS, GEMM_DTYPE, prepare, relative_error,  # noqa: E402
                                       triton_usable, weight_bytes)
from quantstudy.models.shape import ModelShape  # noqa: E402

# ||out - ref|| / ||ref|| against float64 of the same operands: bf16 output rounding
# (2^-9 per element) dominates; 1e-2 leaves room for fp32 accumulation order.
KERNEL_ERROR_BOUND = {"bf16": 1e-2, "fp8": 1e-2, "int8": 1e-2, "w4a16-triton": 1e-2, "w4a16-tinygemm": 1e-2}
CPU_SHAPES = {"tiny": {"qkv_proj": (384, 256), "o_proj": (256, 256), "gate_up_proj": (1024, 256),
                       "down_proj": (256, 512)}}
CPU_TOKENS = (1, 16, 33)


def check_cell(fmt: str, n: int, k: int, m: int, device: torch.device, gen: torch.Generator) -> dict:
    """Fresh random weight and activations; kernel vs float64 of its own operands, and the
    format's quantization error vs the float64 product of the unquantized inputs."""
    w = torch.randn(n, k, generator=gen, device=device) / math.sqrt(k)
    x = torch.randn(m, k, generator=gen, device=device).to(torch.bfloat16)
    layer = prepare(w, fmt)
    if fmt in ("fp8", "int8"):
        q, sx = layer.quantize_activations(x)
        out, ref = layer.gemm(x, q, sx), layer.reference(x, q, sx)
    else:
        out, ref = layer.forward(x), layer.reference(x)
    exact = x.double() @ w.double().t()
    if out.shape != (m, n):
        return {"kernel_error": float("inf"), "quant_error": float("inf"), "ok": False}
    err = relative_error(out, ref)
    return {"kernel_error": err, "quant_error": relative_error(out, exact), "ok": err <= KERNEL_ERROR_BOUND[fmt]}


def time_cell(fmt: str, n: int, k: int, m: int, device: torch.device, l2_bytes: int) -> dict:
    """Median time per call (s), from CUDA-graph replays over rotating weight copies."""
    per_set = weight_bytes(n, k, fmt) + 2 * m * (k + n)
    sets = max(1, min(16, math.ceil(3 * l2_bytes / per_set)))
    layers = [prepare(torch.randn(n, k, device=device) / math.sqrt(k), fmt) for _ in range(sets)]
    xs = [torch.randn(m, k, device=device, dtype=torch.bfloat16) for _ in range(sets)]
    quantized = [layer.quantize_activations(x) if fmt in ("fp8", "int8") else (None, None)
                 for layer, x in zip(layers, xs)]

    def total(i):
        return layers[i % sets].forward(xs[i % sets])

    def gemm_only(i):
        q, sx = quantized[i % sets]
        return layers[i % sets].gemm(xs[i % sets], q, sx)

    out = {"sets": sets, "total_s": _graph_time(total, sets)}
    out["gemm_s"] = _graph_time(gemm_only, sets) if fmt in ("fp8", "int8") else out["total_s"]
    return out


def _graph_time(fn, sets: int, replays: int = 15) -> float:
    for i in range(max(sets, 3)):          # warm-up: autotuning, handles, lazy modules
        fn(i)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(sets):
        fn(i)
    end.record()
    torch.cuda.synchronize()
    estimate = start.elapsed_time(end) / 1e3 / sets
    inner = max(sets, min(512, math.ceil(2e-3 / max(estimate, 1e-7))))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        for i in range(inner):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / inner)
    del graph
    return statistics.median(times)


def ceilings(device: torch.device) -> dict:
    """Measured peaks on this card: device-to-device copy and large GEMMs per dtype."""
    def timed(fn, reps=10):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            fn()
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / 1e3 / reps

    src = torch.randn(2**29, device=device, dtype=torch.float32)  # 2 GiB
    dst = torch.empty_like(src)
    out = {"copy_tb_s": 2 * src.numel() * 4 / timed(lambda: dst.copy_(src)) / 1e12}
    del src, dst
    s = 8192
    a, b = torch.randn(s, s, device=device, dtype=torch.bfloat16), torch.randn(s, s, device=device, dtype=torch.bfloat16)
    out["bf16_tflops"] = 2 * s**3 / timed(lambda: a @ b) / 1e12
    try:
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()
        one = torch.ones((), device=device)
        out["fp8_tflops"] = 2 * s**3 / timed(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one,
                                                                       out_dtype=torch.bfloat16)) / 1e12
    except Exception as exc:  # noqa: BLE001 - a card without FP8 reports why and goes on
        out["fp8_error"] = str(exc).splitlines()[0]
    ai = torch.randint(-100, 100, (s, s), device=device, dtype=torch.int8)
    bi = torch.randint(-100, 100, (s, s), device=device, dtype=torch.int8).t().contiguous().t()
    out["int8_tops"] = 2 * s**3 / timed(lambda: torch._int_mm(ai, bi)) / 1e12
    return out


def roofline(fmt: str, n: int, k: int, m: int, gpu) -> dict:
    bytes_moved = weight_bytes(n, k, fmt) + 2 * m * (k + n)
    flops = 2 * m * n * k
    peak = gpu.peak_flops(GEMM_DTYPE[fmt])
    return {"bytes": bytes_moved, "flops": flops,
            "floor_s": max(bytes_moved / gpu.bandwidth, flops / peak if peak else 0.0)}


def summarize(rows: list[dict], formats: list[str]) -> dict:
    """Speedup vs BF16 per cell, the winner, and per-format efficiencies for the roofline."""
    by_cell: dict[tuple, dict] = {}
    for r in rows:
        if "total_s" in r:
            by_cell.setdefault((r["model"], r["layer"], r["m"]), {})[r["format"]] = r
    table, wins = [], {}
    for (model, layer, m), cell in by_cell.items():
        if "bf16" not in cell:
            continue
        base = cell["bf16"]["total_s"]
        speed = {f: base / cell[f]["total_s"] for f in formats if f in cell}
        winner = max(speed, key=speed.get)
        wins.setdefault(m, {}).setdefault(winner, 0)
        wins[m][winner] += 1
        table.append({"model": model, "layer": layer, "m": m, "speedup": speed, "winner": winner})
    # Fractions of the datasheet ceilings, median over shapes: bandwidth for one token
    # (synchronous decode) and for 16 (small-batch decode), compute for 4096 (prefill).
    eff: dict[str, dict] = {"decode_bandwidth": {}, "batch16_bandwidth": {}, "prefill_compute": {}}
    for f in formats:
        timed = [r for r in rows if r["format"] == f and "total_s" in r]
        for key, m, value in (("decode_bandwidth", 1, lambda r: r["achieved_tb_s"] * 1e12 / r["peak_bandwidth"]),
                              ("batch16_bandwidth", 16, lambda r: r["achieved_tb_s"] * 1e12 / r["peak_bandwidth"]),
                              ("prefill_compute", 4096, lambda r: r["achieved_tflops"] * 1e12 / r["peak_flops"])):
            values = [value(r) for r in timed if r["m"] == m and r.get("peak_flops")]
            if values:
                eff[key][f] = round(statistics.median(values), 3)
    return {"speedups": table, "wins_by_tokens": wins, "efficiency": eff}


def markdown(summary: dict, formats: list[str]) -> str:
    fmts = [f for f in formats if f != "bf16"]
    lines = ["| model | layer | tokens | " + " | ".join(f"{f} ×" for f in fmts) + " | fastest |",
             "|---|---|---:|" + "---:|" * len(fmts) + "---|"]
    for t in summary["speedups"]:
        cells = [f"{t['speedup'][f]:.2f}" if f in t["speedup"] else "–" for f in fmts]
        lines.append(f"| {t['model']} | {t['layer']} | {t['m']} | " + " | ".join(cells) + f" | {t['winner']} |")
    return "\n".join(lines)


def write_record(path: Path, result: dict) -> None:
    """The card's figures for the roofline model (quantstudy.bench.roofline_constants.measured_efficiency)."""
    env, gpu = result["env"], get_gpu(result["env"]["device"])
    record = {"card": env["device"], "catalogue_entry": gpu.name, "date": env["date"],
              "torch": env["torch"], "triton": env.get("triton"), "ceilings": env["ceilings"],
              "datasheet": {"hbm_tb_s": gpu.hbm_tb_s, "tflops": gpu.tflops},
              "source": "benchmarks/gpu_kernels.py (median over Llama-3.1-8B/70B fused linear shapes)",
              **result["summary"]["efficiency"], "wins_by_tokens": result["summary"]["wins_by_tokens"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU, correctness only")
    ap.add_argument("--models", default="llama-3.1-8b,llama-3.1-70b")
    ap.add_argument("--tokens", default="1,16,128,1024,4096")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and table.md")
    ap.add_argument("--record", type=Path, default=None, help="write the card's efficiencies here (JSON)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop timing new cells after this")
    ap.add_argument("--summarize", type=Path, default=None,
                    help="rebuild table and --record from a results.json of an earlier GPU run")
    args = ap.parse_args(argv)
    if args.summarize:
        result = json.loads(args.summarize.read_text())
        formats = sorted({r["format"] for r in result["rows"]}, key=FORMATS.index)
        result["summary"] = summarize(result["rows"], formats)
        if args.record:
            write_record(args.record, result)
        print(markdown(result["summary"], formats))
        return 0
    t0 = time.time()
    use_cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if use_cuda else "cpu")
    gen = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)
    formats = [f for f in args.formats.split(",") if f]
    if not use_cuda:
        formats = [f for f in formats if f != "w4a16-tinygemm"]  # tinygemm's layout is CUDA-only
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if use_cuda else "cpu",
           "date": datetime.date.today().isoformat(), "triton_kernel": triton_usable(device)}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        pass
    gpu = None
    if use_cuda:
        props = torch.cuda.get_device_properties(device)
        env.update(sms=props.multi_processor_count, l2_bytes=getattr(props, "L2_cache_size", 50 << 20),
                   capability=".".join(map(str, torch.cuda.get_device_capability())))
        gpu = get_gpu(env["device"])
        env["ceilings"] = ceilings(device)
        print("ceilings:", json.dumps(env["ceilings"]), flush=True)
        shapes = {m: ModelShape.known(m).linear_shapes() for m in args.models.split(",")}
        tokens = [int(t) for t in args.tokens.split(",")]
    else:
        shapes, tokens = CPU_SHAPES, list(CPU_TOKENS)
    rows, failed = [], 0
    for model, layers in shapes.items():
        for layer, (n, k) in layers.items():
            for m in tokens:
                for fmt in formats:
                    row = {"model": model, "layer": layer, "n": n, "k": k, "m": m, "format": fmt}
                    try:
                        row.update(check_cell(fmt, n, k, m, device, gen))
                    except Exception as exc:  # noqa: BLE001 - a missing kernel is a finding, not a crash
                        row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                    if not row["ok"]:
                        failed += 1
                        print(f"FAIL {model} {layer} m={m} {fmt}: {row.get('error') or row['kernel_error']}", flush=True)
                    elif use_cuda and time.time() - t0 < args.budget_s:
                        try:
                            row.update(time_cell(fmt, n, k, m, device, env["l2_bytes"]))
                        except Exception as exc:  # noqa: BLE001 - keep the other cells
                            row["error"] = f"timing: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                            print(f"TIMING FAILED {model} {layer} m={m} {fmt}: {row['error']}", flush=True)
                            rows.append(row)
                            continue
                        roof = roofline(fmt, n, k, m, gpu)
                        row.update(achieved_tb_s=roof["bytes"] / row["total_s"] / 1e12,
                                   achieved_tflops=roof["flops"] / row["total_s"] / 1e12,
                                   roofline_fraction=roof["floor_s"] / row["total_s"],
                                   peak_bandwidth=gpu.bandwidth, peak_flops=gpu.peak_flops(GEMM_DTYPE[fmt]))
                    rows.append(row)
                if use_cuda:
                    torch.cuda.empty_cache()
            print(f"{model} {layer} done at {time.time() - t0:.0f} s", flush=True)
    result = {"env": env, "rows": rows, "failed_checks": failed, "wall_s": time.time() - t0}
    if use_cuda:
        result["summary"] = summarize(rows, formats)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=1))
        if use_cuda:
            (args.out / "table.md").write_text(markdown(result["summary"], formats) + "\n")
    if args.record and use_cuda:
        write_record(args.record, result)
    checked = sum(1 for r in rows if "kernel_error" in r)
    worst = {f: max((r["kernel_error"] for r in rows if r["format"] == f and "kernel_error" in r), default=None)
             for f in formats}
    print(f"correctness: {checked - failed}/{len(rows)} cells within bounds; worst kernel error per format: "
          + ", ".join(f"{f} {e:.2e}" for f, e in worst.items() if e is not None))
    if use_cuda:
        print(json.dumps(result["summary"]["efficiency"]))
        print(json.dumps(result["summary"]["wins_by_tokens"]))
        print(markdown(result["summary"], formats))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
