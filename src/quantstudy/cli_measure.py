"""quantstudy's measuring commands: evaluate, compare (accuracy and text, in process or on the
served engine), predict (roofline) and bench (vLLM). Registered on the app of `cli_common`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from quantstudy.cli_common import JSON_HELP, app, console, err_console, one_line_errors, print_json
from quantstudy.errors import QuantstudyError

DEFAULT_TASKS = "mmlu,arc_challenge,hellaswag,winogrande,gsm8k,humaneval,ifeval,ruler,ppl,kl"


@app.command()
@one_line_errors
def evaluate(
    model: str = typer.Option("smollm2-135m", help="Baseline: embedded model name, HF folder or .gguf file."),
    variant: list[Path] = typer.Option([], help="Quantized checkpoint folder (repeat for several)."),
    tasks: str = typer.Option(DEFAULT_TASKS, help="Comma-separated tasks (with --task-file and no --tasks: only "
                              "the files' tasks)."),
    limit: Optional[int] = typer.Option(None, help="Items per task (per subject for MMLU and MATH); intervals widen "
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
    prefix_cache: bool = typer.Option(False, "--prefix-cache", help="Served: turn vLLM's prefix cache on (shared "
                                      "few-shot prompts computed once: faster, but in bf16 a score then depends on "
                                      "what the server ran before)."),
    until_decided: bool = typer.Option(False, "--until-decided", help="Score the accuracy tasks in rounds "
                                       "(--round items each, every model on the same new items) and stop a task "
                                       "once every variant is decided against --min-recovery (group-sequential "
                                       "test); --limit is then the budget per task (default 1000)."),
    min_recovery: float = typer.Option(0.99, help="With --until-decided: the recovery floor decided against."),
    round_items: int = typer.Option(100, "--round", help="With --until-decided: items per task per round."),
    samples: str = typer.Option("1", help="Code tasks (HumanEval, MBPP): samples per problem, scored as unbiased pass@1 "
                                "(pass@k kept per item); 'paper' = the paper's 50 samples at temperature 0.2, "
                                "top-p 0.95. Default: one greedy sample."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature for the generative tasks "
                                                "(default 0: greedy; 0.2 with --samples paper)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling mass (default 1; 0.95 with "
                                          "--samples paper)."),
    seeds: int = typer.Option(1, help="Reasoning tasks (GSM8K, MATH): K sampled runs (seeds 0..K-1, needs --temperature); "
                              "item score = mean over seeds, intervals resample items and seeds."),
    task_file: list[Path] = typer.Option([], "--task-file", help="An lm-eval task YAML of your own, with local "
                                         "data (dataset_path: json/arrow/parquet, data_files); repeatable. lm-eval "
                                         "builds its requests and scores them; the engine answers them. For tasks "
                                         "whose data cannot ship here: TruthfulQA, GPQA, MMLU-Pro, BBH, MuSR."),
    fewshot: str = typer.Option("paper", help="Multiple-choice shots: 'paper' (the Open LLM Leaderboard v1's, as the "
                                "paper: ARC-Challenge 25, HellaSwag 10, Winogrande 5, MMLU 5; shots drawn as "
                                "lm-eval draws them) or 'zero' (every task 0-shot: ~10x cheaper)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " The report is also written to --out."),
) -> None:
    """Accuracy of the baseline and each variant on the same items, with recovery and paired intervals.

    Tasks follow lm-eval's definitions over packaged data: MMLU, ARC-Challenge, HellaSwag,
    Winogrande (log-likelihood; the paper's Leaderboard-v1 shots unless --fewshot zero), GSM8K 8-shot CoT strict match, MATH 4-shot
    (minerva_math; math_hard: Level 5) exact match, HumanEval and MBPP 3-shot pass@1
    (sandboxed), IFEval-style instructions, RULER-style needle retrieval, perplexity and KL
    divergence / top-1 agreement against the baseline on held-out WikiText. With --engine
    vllm|auto the served numbers are compared with emulation and the engine's noise floor.
    Greedy by default; --samples N|paper scores HumanEval and MBPP as pass@1 from N samples,
    --seeds K GSM8K and MATH as the mean of K sampled runs (with --temperature), intervals over
    items and draws.
    """
    import json

    from quantstudy.evaluate.registry import parse_tasks
    from quantstudy.evaluate.report_table import chain_table, evaluation_table, served_table
    from quantstudy.evaluate.runner import EvalSettings, evaluate_models
    from quantstudy.evaluate.sampling import resolve

    from quantstudy.evaluate.registry import register_task_file

    sampling = resolve(samples, temperature, top_p, seeds)   # before any model loads: a bad value is one line
    extra = [register_task_file(str(f)) for f in task_file]
    named = [] if extra and tasks == DEFAULT_TASKS else parse_tasks(tasks)
    settings = EvalSettings(tasks=tuple(dict.fromkeys([*named, *extra])), limit=limit, chat=chat_template, seed=seed,
                            batch_size=batch_size, dtype=dtype, engine=engine, concurrency=concurrency, twin=twin,
                            prefix_cache=prefix_cache, until_decided=until_decided, min_recovery=min_recovery,
                            round_items=round_items, sampling=sampling, fewshot=fewshot)
    plan = _serve_plan(model, variant, engine, url, vllm_python)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        report = evaluate_models(model, variant, settings, store, progress=progress, plan=plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    if as_json:
        print_json(report)
        return
    table, notes = evaluation_table(report)
    console.print(table)
    if report.get("served"):
        console.print(served_table(report))
    chains = chain_table(report)
    if chains is not None:
        console.print(chains)
    for task, floor in (report.get("seed_floor") or {}).items():
        console.print(f"seed noise floor on {task}: ±{100 * floor['floor']:.1f} points (the baseline against "
                      f"itself over {floor['draws']} draws)", highlight=False)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"report: {out}   store: {store}")


def _serve_plan(model: str, variants: list[Path], engine: str, urls: list[str], vllm_python: Optional[str]):
    """Which models the served engine takes (engine auto/vllm), from this machine's preflight;
    `--engine vllm` with a model it cannot serve is a one-line error here, before any work."""
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
    served = serving_plan(pairs, engine, python=vllm_python, attached=list(endpoints))
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
    gpus: Optional[int] = typer.Option(None, "--gpus", min=1, help="Price every format on exactly this many GPUs "
                                       "(e.g. 8 for a node): data-parallel replicas of its smallest tensor-parallel "
                                       "size, or a larger TP where that is faster, plus each format's "
                                       "latency-throughput curve. Default: each format on the fewest GPUs that hold it."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Predict serving latency, throughput, GPU count and queries per dollar with the roofline model.

    For hardware not at hand: datasheet ceilings times efficiencies fitted to a third of the
    published vLLM measurements in bench/data/vllm_published.json and checked on the rest
    (README: fitted and validated figures). Multi-GPU layouts pay vLLM's all-reduces over the
    card's link (NVLink, PCIe) and pipeline hand-offs across nodes. Formats a card cannot run
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
    if as_json:
        import dataclasses

        from quantstudy.bench.cost import cost_table

        rows = [{"shape": model_config, "use_case": case, **dataclasses.asdict(row)}
                for case in cases for row in cost_table(shape, formats, hardwares, case, gpus=gpus)]
        if gpus:
            from quantstudy.bench.views import deployment_curves

            for row in rows:
                curve = deployment_curves(shape, [row["fmt"]], row["hardware"], row["use_case"], gpus)
                row["curve"] = [dataclasses.asdict(p) for d in curve for p in d.curve]
        print_json(rows)
        return
    for case in cases:
        console.print(prediction_table(model_config, shape, formats, hardwares, case, gpus))
        if gpus:
            from quantstudy.bench.views import curve_table

            for hw in hardwares:
                curves = curve_table(model_config, shape, formats, hw, case, gpus)
                if curves is not None:
                    console.print(curves)
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
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " The report is also written to --out."),
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
    quiet = None
    if as_json:
        import io

        from rich.console import Console

        quiet = Console(file=io.StringIO())
    report = run_compare_cli(model, variant, store=store, limit=limit, max_new_tokens=max_new_tokens, seed=seed,
                             out=out, examples=examples, batch_size=batch_size, console=quiet or console, plan=plan)
    if as_json:
        print_json(report)


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
    tensor_parallel_size: int = typer.Option(1, help="GPUs each model is sharded over (vLLM tensor "
                                             "parallelism); at most the GPUs the engine sees. GPU engines only."),
    gpu_memory_utilization: Optional[float] = typer.Option(None, help="Share of each GPU's memory vLLM may use "
                                                           "(default: vLLM's). GPU engines only."),
    max_model_len: Optional[int] = typer.Option(None, help="vLLM's context limit (default: the longest "
                                                "request, rounded up to 256, capped at the model's context)."),
    eager: Optional[bool] = typer.Option(None, "--eager/--no-eager", help="Force eager mode on or off (default: "
                                         "eager on a CPU engine, CUDA graphs on a GPU)."),
    out: Path = typer.Option(Path("runs/bench.json"), help="Results as JSON."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " The results are also written to --out."),
) -> None:
    """Serving latency and throughput on vLLM for the paper's use cases, per format.

    Starts `vllm serve` (the API server) for the baseline and each variant in turn, from the
    vLLM environment, drives it with streaming requests of exact token counts, and shuts it
    down. Formats the engine cannot run on this hardware are skipped with the reason. The
    hardware is what the engine's environment reports (a GPU box needs CUDA vLLM: `make vllm-env`).
    """
    import json

    from quantstudy.bench.plan import check_engine_options, execute, local_hardware, plan_runs
    from quantstudy.bench.roofline_constants import USE_CASES
    from quantstudy.bench.runner import bench_table
    from quantstudy.models import resolve_model

    modes = {"sync": "synchronous", "async": "concurrent"}
    profile_names = [modes.get(m.strip(), m.strip()) for m in mode.split(",") if m.strip()]
    cases = list(USE_CASES) if use_cases == "all" else [u.strip() for u in use_cases.split(",") if u.strip()]
    rate_values = [float(r) for r in rates.split(",") if r.strip()]
    models = [("baseline", Path(resolve_model(model)))] + [(v.name, Path(v)) for v in variant]
    server_options = {"tensor_parallel_size": tensor_parallel_size, "gpu_memory_utilization": gpu_memory_utilization,
                      "max_model_len": max_model_len, "enforce_eager": eager}
    if url is not None:
        flags = {"tensor_parallel_size": "--tensor-parallel-size", "gpu_memory_utilization":
                 "--gpu-memory-utilization", "max_model_len": "--max-model-len", "enforce_eager": "--eager/--no-eager"}
        given = [flags[k] for k, v in server_options.items()
                 if v is not None and (k, v) != ("tensor_parallel_size", 1)]
        if given:
            raise QuantstudyError(f"{', '.join(given)}: options for a server quantstudy starts; with --url the "
                                  "endpoint runs as its owner started it")
        hardware = None
    else:
        check_engine_options(vllm_python, tensor_parallel_size, gpu_memory_utilization)
        from quantstudy.inference.device import probe_devices

        probe = probe_devices(vllm_python)
        err_console.print(f"engine device: {probe.summary()}", highlight=False)
        if probe.note:
            err_console.print(f"[yellow]note:[/] {probe.note}", highlight=False)
        hardware = local_hardware(vllm_python)
    plan = plan_runs(models, hardware, profile_names, requests, concurrency, fallback_requests)
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
                           slo_ttft_s=slo_ttft, slo_itl_s=slo_itl, **server_options)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([r.to_dict() for r in results], indent=1))
    if as_json:
        print_json([r.to_dict() for r in results])
        return
    console.print(bench_table(results))
    console.print(f"results: {out}")
