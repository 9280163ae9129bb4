"""quantstudy's command line: one thin command per stage.

Every user-facing failure is a `QuantstudyError` and prints as one line (exit code 2);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Optional

# Never reach for a model hub: everything quantstudy uses ships in packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# transformers' warnings about a model's own config (e.g. "Ignoring clean_up_tokenization_spaces
# for BPE") are noise between our progress lines; set TRANSFORMERS_VERBOSITY=warning to see them.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from quantstudy.errors import QuantstudyError

app = typer.Typer(
    help="Should I serve this model in BF16, FP8, INT8 or INT4? Quantize, evaluate, compare, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def one_line_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QuantstudyError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[item]}"), console=err_console, transient=True)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: str, option: str) -> int:
    """'8GiB', '512MB', '2g', '1000000' -> bytes."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", text)
    unit = m and _UNITS.get(m.group(2).lower())
    if not m or unit is None or float(m.group(1)) <= 0:
        raise QuantstudyError(f"{option} {text!r} is not an amount of memory (e.g. 8GiB, 512MB)")
    return int(float(m.group(1)) * unit)


def _fmt_db(x: float) -> str:
    return "exact" if x == float("inf") else f"{x:.1f}"


@app.command()
@one_line_errors
def schemes() -> None:
    """List the named quantization presets."""
    from quantstudy.schemes import PRESETS

    table = Table(title="quantization presets")
    for col in ("name", "label", "weights", "activations", "skips"):
        table.add_column(col, no_wrap=True)
    for s in PRESETS.values():
        w = s.weights
        gran = {"group": f"g{w.group_size}", "block": f"block {w.block[0]}x{w.block[1]}" if w.block else ""}.get(
            w.strategy.value, w.strategy.value)
        weights = f"{w.type.value}{w.num_bits} {'sym' if w.symmetric else 'asym'} {gran}"
        a = s.activations
        acts = "16-bit" if a is None else f"{a.type.value}{a.num_bits} dynamic per {a.strategy.value}" + (
            f" {a.group_size}" if a.group_size else "")
        table.add_row(s.name, s.label, weights, acts, ",".join(s.ignore))
    console.print(table)


@app.command()
@one_line_errors
def quantize(
    model: str = typer.Option("smollm2-135m", help="Embedded model name, HF folder (safetensors) or .gguf file."),
    scheme: str = typer.Option(..., help="Preset name; see `quantstudy schemes`."),
    out: Path = typer.Option(..., help="Output folder for the compressed-tensors checkpoint (must not exist)."),
    algo: str = typer.Option("rtn", help="How quantized values are chosen: rtn (no data), gptq (act-order + "
                             "MSE clipping by default), awq (activation-aware scales + clip search)."),
    smoothquant: Optional[float] = typer.Option(None, help="SmoothQuant strength (e.g. 0.8) applied before the "
                                                "algorithm; the paper's W8A8-INT8 recipe is --smoothquant 0.8 --algo gptq."),
    calibration: str = typer.Option("instruct-mix", help="Calibration data: instruct-mix (chat-formatted GSM8K/MBPP/"
                                    "ARC Q&A), lambada, wikitext, random, or jsonl:PATH."),
    num_samples: int = typer.Option(64, help="Calibration samples."),
    seq_len: int = typer.Option(512, help="Tokens per calibration sample."),
    seed: int = typer.Option(0, help="Seed for the calibration sample."),
    dampening: float = typer.Option(0.01, help="GPTQ dampening, a fraction of the mean Hessian diagonal."),
    actorder: bool = typer.Option(True, help="GPTQ: visit columns by decreasing activation energy (static groups)."),
    mse_clip: bool = typer.Option(True, help="GPTQ: MSE-optimal clipping of scales instead of abs-max."),
    true_sequential: bool = typer.Option(True, help="GPTQ: one forward per decoder layer on all calibration "
                                         "samples at once, each linear calibrated on the quantized ones before it "
                                         "(half the GEMMs; needs one layer's activations for every sample within "
                                         "--max-memory, default 4 GiB). --no-true-sequential: llm-compressor's two "
                                         "forwards per layer, batch by batch."),
    group_size: Optional[int] = typer.Option(None, help="Override the group size (or square block side). "
                                             "SmolLM2's width 576 needs 64 or 32 instead of 128."),
    dtype: str = typer.Option("bfloat16", help="dtype of scales and unquantized tensors: bfloat16, float16, float32."),
    ignore: Optional[str] = typer.Option(None, help="Comma-separated layers to keep unquantized "
                                         "(names or re:regex); default: lm_head."),
    allow_pickle: bool = typer.Option(False, help="Allow loading pickled .bin weights (can run code)."),
    device: str = typer.Option("auto", help="Where calibration forwards, Hessians, GPTQ and AWQ run: auto (the "
                               "first CUDA device where torch sees one, else the CPU), cpu, cuda or cuda:N."),
    max_memory: Optional[str] = typer.Option(None, help="Memory budget for the calibration activations carried "
                                             "between layers (e.g. 8GiB); past it they spill to disk. Default: "
                                             "no budget."),
    forward_dtype: str = typer.Option("auto", help="GEMM dtype of the calibration forwards: auto (bfloat16 on "
                                      "a GPU, float32 on a CPU), float32, or bfloat16 (on a CPU: float32 weights, "
                                      "bf16 GEMMs; ~11-14% faster where the CPU has AVX512-BF16 or AMX, slightly "
                                      "worse quality). Hessians are float32 either way."),
) -> None:
    """Quantize a model into a compressed-tensors checkpoint that vLLM and transformers load.

    The model is streamed from its safetensors files: one decoder layer in memory at a time
    (calibrated recipes), or one tensor at a time (RTN, no forward pass), written shard by shard
    (5 GB shards) into a temporary folder renamed into place at the end."""
    from quantstudy.quantize.calibration import CalibrationSpec
    from quantstudy.quantize.pipeline import quantize_checkpoint
    from quantstudy.quantize.recipes import Recipe
    from quantstudy.schemes import get_scheme

    chosen = get_scheme(scheme, group_size)
    if ignore is not None:
        chosen = chosen.with_ignore(tuple(p.strip() for p in ignore.split(",") if p.strip()))
    recipe = Recipe(algorithm=algo, smoothquant=smoothquant, dampening=dampening, actorder=actorder, mse_clip=mse_clip,
                    true_sequential=true_sequential)
    calib = CalibrationSpec(source=calibration, num_samples=num_samples, seq_len=seq_len, seed=seed)
    budget = parse_bytes(max_memory, "--max-memory") if max_memory is not None else None
    label = algo + (f" + smoothquant {smoothquant}" if smoothquant is not None else "")
    with _progress() as progress:
        task = progress.add_task(f"quantize {chosen.name} ({label})", total=None, item="loading model")
        result = quantize_checkpoint(
            model, chosen, out, recipe=recipe, calibration=calib, dtype=dtype, allow_pickle=allow_pickle,
            device=device, max_memory=budget, forward_dtype=forward_dtype,
            on_start=lambda n: progress.update(task, total=n, item=""),
            on_layer=lambda name: progress.update(task, advance=1, item=name),
        )
    info = result.checkpoint
    console.print(
        f"[green]wrote[/] {info.path}  {chosen.label} ({chosen.name}, {label})  "
        f"{len(info.quantized_layers)} layers  {info.disk_bytes / 2**20:.1f} MiB  "
        f"SQNR {_fmt_db(result.sqnr_db)} dB (min layer {_fmt_db(result.min_layer_sqnr_db)})  {result.seconds:.1f}s"
    )


@app.command()
@one_line_errors
def info(path: Path = typer.Argument(..., help="A compressed-tensors checkpoint folder.")) -> None:
    """Print what a quantized checkpoint holds: scheme, format, layers, size, recipe."""
    from quantstudy.models.checkpoint import read_checkpoint_info

    ci = read_checkpoint_info(path)
    s = ci.scheme
    table = Table(show_header=False, title=str(ci.path))
    rows = [
        ("scheme", f"{s.name} ({s.label})"),
        ("weights", f"{s.weights.type.value}{s.weights.num_bits} {'sym' if s.weights.symmetric else 'asym'} "
                    f"{s.weights.strategy.value}" + (f" {s.weights.group_size}" if s.weights.group_size else "")
                    + (f" {s.weights.block}" if s.weights.block else "")),
        ("activations", "16-bit" if s.activations is None else
         f"{s.activations.type.value}{s.activations.num_bits} dynamic per {s.activations.strategy.value}"),
        ("format", ci.format),
        ("quantized layers", str(len(ci.quantized_layers))),
        ("skipped", ", ".join(s.ignore) or "-"),
        ("architecture", ", ".join(ci.config.get("architectures", []))),
        ("dtype", str(ci.config.get("dtype") or ci.config.get("torch_dtype"))),
        ("size on disk", f"{ci.disk_bytes / 2**20:.1f} MiB"),
        ("algorithm", str(ci.recipe.get("algorithm", "unknown"))),
        ("source", str(ci.recipe.get("source_model", "unknown"))),
        ("calibration", str(ci.recipe.get("calibration"))),
    ]
    layers = ci.recipe.get("layers") or []
    if layers:
        finite = [float(r["sqnr_db"]) for r in layers if math.isfinite(float(r["sqnr_db"]))]
        rows.append(("layer SQNR dB", f"min {min(finite):.1f} / max {max(finite):.1f}" if finite else "exact"))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


@app.command()
@one_line_errors
def study(
    config: Optional[Path] = typer.Argument(None, help="Study YAML (model, variants, calibration, evaluate, "
                                            "compare, bench, predict, deployment); none: the paper's study "
                                            "on the embedded model."),
    out: Path = typer.Option(Path("runs/study"), help="Study folder: store, checkpoints, results.json, report/."),
    executor: Optional[str] = typer.Option(None, help="local (in process, in order) or ray; default: the "
                                           "config's executor (local)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (ray executor); default: start a "
                                          "local Ray."),
) -> None:
    """The whole study, model to recommendation: quantize every variant, evaluate, compare, bench, predict, report.

    Every job's result is kept in <out>/study.sqlite under a hash of its inputs: a rerun (or a
    run after a kill) redoes only what is missing and prints the same report. A failing stage is
    reported in one line, the rest still runs, and the exit code is 1.
    """
    # Before torch loads libgomp: idle OpenMP threads sleep instead of spinning. On a CPU
    # shared with other work, spinning threads starve the ones doing the work (RTN of the
    # embedded model: 33 s spinning vs 4 s passive on 2 busy cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from quantstudy.study import load_config, run_study
    from quantstudy.study.assemble import print_summary

    cfg = load_config(config)
    outcome = run_study(cfg, out, executor=executor, address=address, console=err_console)
    print_summary(outcome, console)
    if outcome.failures:
        err_console.print(f"[bold red]error:[/] {len(outcome.failures)} job(s) failed: "
                          + "; ".join(f"{f['stage']} {f['name']}" for f in outcome.failures), highlight=False)
        raise typer.Exit(1)


@app.command()
@one_line_errors
def evaluate(
    model: str = typer.Option("smollm2-135m", help="Baseline: embedded model name, HF folder or .gguf file."),
    variant: list[Path] = typer.Option([], help="Quantized checkpoint folder (repeat for several)."),
    tasks: str = typer.Option("mmlu,arc_challenge,hellaswag,winogrande,gsm8k,humaneval,ifeval,ruler,ppl,kl",
                              help="Comma-separated tasks."),
    limit: Optional[int] = typer.Option(None, help="Items per task (per subject for MMLU); intervals widen "
                                        "as it shrinks, and the table says so."),
    chat_template: str = typer.Option("auto", help="auto: chat template for IFEval and RULER only; "
                                      "on: every generative task; off: raw prompts."),
    batch_size: int = typer.Option(16, help="Rows per forward pass."),
    store: Path = typer.Option(Path("runs/evaluate.sqlite"), help="Results store: finished items are "
                               "never recomputed."),
    out: Path = typer.Option(Path("runs/evaluate.json"), help="Report as JSON."),
    seed: int = typer.Option(0, help="Seed for bootstrap resampling and generated task items."),
    dtype: str = typer.Option("float32", help="In-process evaluation dtype (float32 on CPU)."),
    engine: str = typer.Option("hf", help="hf: in process (transformers, fake-quant emulation); vllm: every model "
                               "served by vLLM (its kernels, bf16); auto: vLLM where it runs the format natively "
                               "here, in process otherwise. Every result records its engine."),
    url: list[str] = typer.Option([], help="NAME=URL: score NAME ('baseline' or a variant folder's name) on a "
                                  "running OpenAI-compatible server instead of starting vLLM (repeat)."),
    vllm_python: Optional[str] = typer.Option(None, help="Interpreter with vLLM (default: .venv-vllm, or "
                                              "$QUANTSTUDY_VLLM_PYTHON)."),
    concurrency: int = typer.Option(16, help="Served: requests in flight."),
    twin: bool = typer.Option(True, "--twin/--no-twin", help="Served: also score each served model in process "
                              "(served vs emulated) and the served baseline one request at a time (noise floor)."),
) -> None:
    """Accuracy of the baseline and each variant on the same items, with recovery and paired intervals.

    Tasks follow lm-eval's definitions over packaged data: MMLU 5-shot, ARC-Challenge,
    HellaSwag, Winogrande (log-likelihood), GSM8K 8-shot CoT strict match, HumanEval pass@1
    (sandboxed), IFEval-style instructions, RULER-style needle retrieval, perplexity and KL
    divergence / top-1 agreement against the baseline on held-out WikiText. With --engine
    vllm|auto the served numbers are compared with emulation and the engine's noise floor.
    """
    import json

    from quantstudy.evaluate.registry import parse_tasks
    from quantstudy.evaluate.report_table import evaluation_table, served_table
    from quantstudy.evaluate.runner import EvalSettings, evaluate_models

    settings = EvalSettings(tasks=tuple(parse_tasks(tasks)), limit=limit, chat=chat_template, seed=seed,
                            batch_size=batch_size, dtype=dtype, engine=engine, concurrency=concurrency, twin=twin)
    plan = _serve_plan(model, variant, engine, url, vllm_python)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        report = evaluate_models(model, variant, settings, store, progress=progress, plan=plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    table, notes = evaluation_table(report)
    console.print(table)
    if report.get("served"):
        console.print(served_table(report))
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"report: {out}   store: {store}")


def _serve_plan(model: str, variants: list[Path], engine: str, urls: list[str], vllm_python: Optional[str]):
    """Which models the served engine takes (engine auto/vllm), from this machine's preflight."""
    from quantstudy.evaluate.runner import ServePlan

    names = [Path(v).name for v in variants]
    endpoints = {}
    for item in urls:
        name, sep, address = item.partition("=")
        if not sep or name not in ("baseline", *names):
            raise QuantstudyError(f"--url {item!r}: expected NAME=URL with NAME 'baseline' or one of: {', '.join(names)}")
        endpoints[name] = address
    if engine == "hf":
        return ServePlan()
    from quantstudy.bench.plan import serving_plan
    from quantstudy.models import resolve_model

    pairs = [("baseline", resolve_model(model)), *zip(names, variants)]
    served = serving_plan([(n, f) for n, f in pairs if n not in endpoints], python=vllm_python) if len(endpoints) < len(pairs) else {}
    served.update({n: True for n in endpoints})
    if engine == "auto" and not any(served.get(n) is True for n in names):
        served["baseline"] = "no variant is served here, so neither is the baseline"
    return ServePlan(served=served, urls=endpoints, python=vllm_python)


@app.command()
@one_line_errors
def predict(
    model_config: str = typer.Option("llama-3.1-8b", help="Known shape (llama-3.1-8b/70b/405b), a config.json, "
                                     "a model folder, or an embedded model name."),
    gpu: str = typer.Option("a6000,a100,h100", help="Comma-separated hardware: a6000, a100, l40s, h100, h200, "
                            "b200, or cpu (this machine, measured once)."),
    format_: str = typer.Option("bf16,w8a8-fp8,w8a8-int8,w4a16", "--format", help="Comma-separated formats."),
    use_case: str = typer.Option("code-completion,instruction-following",
                                 help="Comma-separated use cases, or 'all' (the paper's seven)."),
) -> None:
    """Predict serving latency, throughput, GPU count and queries per dollar with the roofline model.

    For hardware not at hand: datasheet ceilings times efficiencies fitted to the paper's
    published A6000 runs and measured on an H200 (see README). Formats a card cannot run
    natively are flagged (preflight), and predicted with the fallback kernel vLLM uses.
    """
    from quantstudy.bench.roofline import resolve_hardware
    from quantstudy.bench.roofline_constants import USE_CASES
    from quantstudy.bench.views import preflight_notes, prediction_table, resolve_shape

    shape = resolve_shape(model_config)
    hardwares = [h.strip() for h in gpu.split(",") if h.strip()]
    if "cpu" in hardwares:
        from quantstudy.bench.cpu import measure_cpu
        hardwares = [measure_cpu() if h == "cpu" else h for h in hardwares]
    for h in hardwares:
        resolve_hardware(h)
    formats = [f.strip() for f in format_.split(",") if f.strip()]
    cases = list(USE_CASES) if use_case == "all" else [u.strip() for u in use_case.split(",") if u.strip()]
    unknown = [u for u in cases if u not in USE_CASES]
    if unknown:
        raise QuantstudyError(f"unknown use case {unknown[0]!r}; known: {', '.join(USE_CASES)}")
    for case in cases:
        console.print(prediction_table(model_config, shape, formats, hardwares, case))
    for note in preflight_notes(formats, hardwares):
        console.print(f"[yellow]preflight:[/] {note}", highlight=False)


@app.command()
@one_line_errors
def compare(
    model: str = typer.Option("smollm2-135m", help="Baseline: embedded model name, HF folder or .gguf file."),
    variant: list[Path] = typer.Option([], help="Quantized checkpoint folder (repeat for several)."),
    limit: Optional[int] = typer.Option(None, help="Prompts to use (of 228; balanced across categories)."),
    max_new_tokens: int = typer.Option(256, help="Greedy tokens per answer (same for every model)."),
    examples: int = typer.Option(3, help="Most divergent examples to show side by side."),
    batch_size: int = typer.Option(8, help="Prompts per generation batch."),
    store: Path = typer.Option(Path("runs/compare.sqlite"), help="Generations cache: done prompts are skipped."),
    out: Path = typer.Option(Path("runs/compare.json"), help="Report as JSON."),
    seed: int = typer.Option(0, help="Seed for the bootstrap intervals."),
    engine: str = typer.Option("hf", help="hf: generate in process; vllm: every model served by vLLM; auto: vLLM "
                               "where it runs the format natively here. A variant is compared with the baseline's "
                               "answers on its own engine."),
    url: list[str] = typer.Option([], help="NAME=URL: generate NAME ('baseline' or a variant folder's name) on a "
                                  "running OpenAI-compatible server (repeat)."),
    vllm_python: Optional[str] = typer.Option(None, help="Interpreter with vLLM (default: .venv-vllm)."),
) -> None:
    """How the variants' generated text differs from the baseline's on open-ended prompts.

    Greedy answers with the chat template, then per prompt: ROUGE-1/L, BERTScore (packaged
    all-MiniLM-L6-v2, last layer; not on RoBERTa-large's scale), semantic similarity
    (sentence-embedding cosine), exact match and the first diverging token; means with
    bootstrap intervals, and the most divergent examples side by side.
    """
    from quantstudy.compare.runner import run_compare_cli

    if limit is not None and limit < 1:
        raise QuantstudyError(f"--limit must be at least 1, got {limit}")
    if engine not in ("hf", "vllm", "auto"):
        raise QuantstudyError(f"--engine must be one of hf, vllm, auto, not {engine!r}")
    plan = _serve_plan(model, variant, engine, url, vllm_python)
    if engine == "vllm":
        refused = {n: r for n, r in plan.served.items() if r is not True}
        if refused:
            raise QuantstudyError("--engine vllm cannot serve " + "; ".join(f"{n}: {r}" for n, r in refused.items()))
    run_compare_cli(model, variant, store=store, limit=limit, max_new_tokens=max_new_tokens, seed=seed, out=out,
                    examples=examples, batch_size=batch_size, console=console, plan=plan)


@app.command()
@one_line_errors
def bench(
    model: str = typer.Option("smollm2-135m", help="Baseline model (served as BF16); embedded name or folder."),
    variant: list[Path] = typer.Option([], help="Quantized checkpoint folder (repeat for several)."),
    use_cases: str = typer.Option("instruction-following", help="Comma-separated use cases, or 'all'."),
    mode: str = typer.Option("sync", help="sync (one request at a time), async (fixed concurrency), "
                             "poisson (rate sweep, --rates), throughput (all at once); comma-separated."),
    scale: float = typer.Option(1.0, help="Shrink the use cases' token counts (e.g. 0.125 on a CPU)."),
    requests: int = typer.Option(8, help="Requests per run (a concurrent run takes at least 2 x concurrency)."),
    concurrency: int = typer.Option(8, help="Streams for the async mode."),
    fallback_requests: int = typer.Option(2, help="Synchronous requests for a format the engine only "
                                          "emulates on this hardware (FP8 on a CPU); no load profiles."),
    rates: str = typer.Option("", help="Requests/s for the poisson mode, comma-separated."),
    url: Optional[str] = typer.Option(None, help="Attach to a running OpenAI-compatible endpoint instead "
                                      "of starting vLLM (one model)."),
    vllm_python: Optional[str] = typer.Option(None, help="Python (or command) of the vLLM environment; "
                                              "default .venv-vllm or $QUANTSTUDY_VLLM_PYTHON."),
    slo_ttft: Optional[float] = typer.Option(None, help="Goodput SLO: time to first token, seconds."),
    slo_itl: Optional[float] = typer.Option(None, help="Goodput SLO: inter-token latency, seconds."),
    out: Path = typer.Option(Path("runs/bench.json"), help="Results as JSON."),
) -> None:
    """Serving latency and throughput on vLLM for the paper's use cases, per format.

    Starts `vllm serve` (the API server) for the baseline and each variant in turn, from the
    vLLM environment, drives it with streaming requests of exact token counts, and shuts it
    down. Formats the engine cannot run on this hardware are skipped with the reason.
    """
    import json

    from quantstudy.bench.plan import execute, local_hardware, plan_runs
    from quantstudy.bench.roofline_constants import USE_CASES
    from quantstudy.bench.runner import bench_table
    from quantstudy.models import resolve_model

    modes = {"sync": "synchronous", "async": "concurrent"}
    profile_names = [modes.get(m.strip(), m.strip()) for m in mode.split(",") if m.strip()]
    cases = list(USE_CASES) if use_cases == "all" else [u.strip() for u in use_cases.split(",") if u.strip()]
    rate_values = [float(r) for r in rates.split(",") if r.strip()]
    models = [("baseline", Path(resolve_model(model)))] + [(v.name, Path(v)) for v in variant]
    plan = plan_runs(models, local_hardware() if url is None else None, profile_names, requests, concurrency,
                     fallback_requests)
    results = []
    for run in plan:
        name = Path(run.folder).name
        if run.skipped:
            err_console.print(f"[yellow]skip[/] {name} ({run.fmt}): {run.reason}", highlight=False)
            continue
        if run.status == "fallback":
            err_console.print(f"[yellow]preflight[/] {run.fmt}: {run.reason} -- {fallback_requests} synchronous "
                              "request(s) only", highlight=False)
        err_console.print(f"serving {name} ({run.fmt}) …")
        results += execute(run, cases, scale, concurrency, rate_values, python=vllm_python, url=url,
                           slo_ttft_s=slo_ttft, slo_itl_s=slo_itl)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([r.to_dict() for r in results], indent=1))
    console.print(bench_table(results))
    console.print(f"results: {out}")


@app.command()
@one_line_errors
def report(
    source: Path = typer.Argument(..., help="A study folder (its study.sqlite is read), a study.sqlite, "
                                  "or a results JSON (runs/study/results.json)."),
    out: Optional[Path] = typer.Option(None, help="Folder for report.html, tables/ and results.json; default: "
                                       "<study>/report, or runs/study/report for a JSON file."),
) -> None:
    """Rebuild the HTML report, the paper-style tables (Markdown, CSV) and the JSON from a study's
    store alone (no model is loaded, nothing is recomputed), or from a results JSON."""
    from quantstudy.report import build_report
    from quantstudy.results import load_results
    from quantstudy.study.run import stored_results

    if source.is_dir() or source.suffix == ".sqlite":
        data = stored_results(source)
        out = out or (source if source.is_dir() else source.parent) / "report"
    else:
        if not source.is_file():
            raise QuantstudyError(f"no study folder, store or results file at {source}")
        data = load_results(source)
        out = out or Path("runs/study/report")
    paths = build_report(data, out)
    console.print(f"report: {paths['report.html']}")


def main() -> None:  # pragma: no cover - console entry point
    if sys.argv[1:2] == ["quantize"]:
        # a process that only quantizes: keep scikit-learn (145 MiB) out of transformers'
        # imports. Here and not in the command, so an in-process caller keeps its sklearn.
        from quantstudy.quantize.process import without_sklearn

        without_sklearn()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
