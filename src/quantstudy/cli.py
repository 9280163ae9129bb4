"""quantstudy's command line: one thin command per stage.

This module holds the commands that make and read artefacts (schemes, quantize, info, study,
report) and the console entry point; the measuring commands (evaluate, compare, predict,
bench) are in `cli_measure`, the shared app and error handling in `cli_common`.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from quantstudy.cli_common import (JSON_HELP, _fmt_db, _progress, app, console, err_console,  # noqa: F401
                                   one_line_errors, parse_bytes, print_json)
from quantstudy.errors import QuantstudyError

@app.command()
@one_line_errors
def schemes(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List the named quantization presets."""
    from quantstudy.schemes import PRESETS

    rows = []
    for s in PRESETS.values():
        w = s.weights
        gran = {"group": f"g{w.group_size}", "block": f"block {w.block[0]}x{w.block[1]}" if w.block else ""}.get(
            w.strategy.value, w.strategy.value)
        a = s.activations
        rows.append({"name": s.name, "label": s.label,
                     "weights": f"{w.type.value}{w.num_bits} {'sym' if w.symmetric else 'asym'} {gran}",
                     "activations": "16-bit" if a is None else f"{a.type.value}{a.num_bits} dynamic per "
                                    f"{a.strategy.value}" + (f" {a.group_size}" if a.group_size else ""),
                     "skips": ",".join(s.ignore)})
    if as_json:
        print_json(rows)
        return
    table = Table(title="quantization presets")
    for col in rows[0]:
        table.add_column(col, no_wrap=True)
    for row in rows:
        table.add_row(*row.values())
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
    kv_cache: Optional[str] = typer.Option(None, "--kv-cache", help="Also an FP8 E4M3 KV cache: fp8 (a K and a V "
                                           "scale per layer, max|x|/448 from the calibration data, which RTN then "
                                           "needs too) or fp8-head (per KV head); vLLM serves it with "
                                           "--kv-cache-dtype fp8."),
    allow_pickle: bool = typer.Option(False, help="Allow loading pickled .bin weights (can run code)."),
    device: str = typer.Option("auto", help="Where calibration forwards, Hessians, GPTQ and AWQ run: auto (the "
                               "first CUDA device where torch sees one, else the CPU), cpu, cuda or cuda:N."),
    max_memory: Optional[str] = typer.Option(None, help="Memory budget for the calibration activations carried "
                                             "between layers (e.g. 8GiB); past it they spill to disk. Default: "
                                             "no budget."),
    forward_dtype: str = typer.Option("auto", help="GEMM dtype of the calibration forwards: auto (bfloat16 on "
                                      "a GPU, float32 on a CPU), float32, or bfloat16 (on a CPU: float32 weights, "
                                      "bf16 GEMMs and float32-accurate Hessians from bf16 GEMMs; ~1.6-1.8x faster "
                                      "GPTQ where the CPU has AMX, held-out perplexity within 1% of float32's). "
                                      "Hessians are float32-accurate either way."),
) -> None:
    """Quantize a model into a compressed-tensors checkpoint that vLLM and transformers load.

    The model is streamed from its safetensors files: one decoder layer in memory at a time
    (calibrated recipes), or one tensor at a time (RTN, no forward pass), written shard by shard
    (5 GB shards) into a temporary folder renamed into place at the end."""
    from quantstudy.quantize.calibration import CalibrationSpec
    from quantstudy.quantize.pipeline import quantize_checkpoint
    from quantstudy.quantize.recipes import Recipe
    from quantstudy.schemes import get_kv_cache, get_scheme

    chosen = get_scheme(scheme, group_size).with_kv_cache(get_kv_cache(kv_cache))
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
def info(path: Path = typer.Argument(..., help="A compressed-tensors checkpoint folder."),
         as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
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
    if as_json:
        print_json(dict(rows))
        return
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
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " Prints the report's results.json (results "
                                 "and recommendation) instead of the summary."),
    preset: Optional[str] = typer.Option(None, help="Without a config: 'paper' (the default: the paper's five "
                                         "variants) or 'frontier' (those plus NVFP4A16, MXFP4A16, MXFP8, W4A8-FP8 "
                                         "and an FP8 KV cache, with long-context perplexity). In a YAML: "
                                         "'variants: frontier'."),
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

    if preset is not None and config is not None:
        raise QuantstudyError("--preset names a study without a config; in a config write 'variants: frontier'")
    if preset is not None:
        from quantstudy.study.config import preset_study

        cfg = preset_study(preset)
    else:
        cfg = load_config(config)
    outcome = run_study(cfg, out, executor=executor, address=address, console=err_console)
    if as_json:
        import json

        print_json(json.loads((outcome.report_dir / "results.json").read_text()))
    else:
        print_summary(outcome, console)
    if outcome.failures:
        err_console.print(f"[bold red]error:[/] {len(outcome.failures)} job(s) failed: "
                          + "; ".join(f"{f['stage']} {f['name']}" for f in outcome.failures), highlight=False)
        raise typer.Exit(1)


def _is_store(source: Path) -> bool:
    return source.is_dir() or source.suffix == ".sqlite"


def _read_study(source: Path):
    """A study's results from its folder (the store), a study.sqlite, or a results JSON."""
    from quantstudy.results import load_results
    from quantstudy.study.run import stored_results

    if _is_store(source):
        return stored_results(source)
    if not source.is_file():
        raise QuantstudyError(f"no study folder, store or results file at {source}")
    return load_results(source)


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

    data = _read_study(source)
    if out is None:
        out = (source if source.is_dir() else source.parent) / "report" if _is_store(source) \
            else Path("runs/study/report")
    paths = build_report(data, out)
    console.print(f"report: {paths['report.html']}")


@app.command()
@one_line_errors
def recommend(
    source: Path = typer.Argument(..., help="A study folder (its store is read), a study.sqlite, or a results JSON."),
    hardware: Optional[str] = typer.Option(None, help="Where to deploy: a6000, a100, l40s, h100, h200, b200 or "
                                           "cpu; default: the study's deployment. Hardware the study did not "
                                           "predict is predicted now (roofline)."),
    mode: Optional[str] = typer.Option(None, help="sync (one request at a time: queries/$ from latency) or async "
                                       "(under load: queries/$ from throughput)."),
    use_case: Optional[str] = typer.Option(None, help="One of the paper's seven use cases (default: the study's, "
                                           "else instruction-following)."),
    latency_slo: Optional[float] = typer.Option(None, help="Latency limit per query, seconds (p90 where measured)."),
    min_recovery: Optional[float] = typer.Option(None, help="Accuracy floor as a fraction of BF16 (e.g. 0.98); met "
                                                 "only where the evidence supports it."),
    budget: Optional[float] = typer.Option(None, help="Most dollars per hour for the deployment's GPUs."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """A decision for another deployment from a finished study, in seconds: nothing is rerun.

    Reads the study's stored results, applies your constraints, and says what meets the
    accuracy floor on evidence (the recovery interval above it, or -- where accuracy is
    unresolved -- KL, top-1 and perplexity close to BF16), what it costs, and why the others
    lose."""
    from quantstudy.bench.roofline_constants import USE_CASES
    from quantstudy.recommend import recommend as decide
    from quantstudy.recommend import resolve_deployment
    from quantstudy.recommend.costs import with_predictions
    from quantstudy.recommend.table import candidates_table

    results = _read_study(source)
    override = {k: v for k, v in {"hardware": hardware, "mode": mode, "use_case": use_case,
                                  "latency_slo_s": latency_slo, "min_recovery": min_recovery,
                                  "budget_usd_per_hour": budget}.items() if v is not None}
    if min_recovery is not None and not 0 < min_recovery <= 1.5:
        raise QuantstudyError(f"--min-recovery is a fraction of BF16's accuracy (e.g. 0.98), not {min_recovery}")
    dep = resolve_deployment(results, override)
    if dep["use_case"] not in USE_CASES:
        raise QuantstudyError(f"unknown use case {dep['use_case']!r}; known: {', '.join(USE_CASES)}")
    rec = decide(with_predictions(results, dep["hardware"], dep["use_case"]), dep)
    if as_json:
        print_json(rec.to_dict())
        return
    console.print(candidates_table(rec))
    console.print(rec.explanation, highlight=False)
    for note in rec.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


# The measuring commands register on the same app, after these: --help lists them in pipeline order.
from quantstudy import cli_measure  # noqa: E402,F401


def main() -> None:  # pragma: no cover - console entry point
    if sys.argv[1:2] == ["quantize"]:
        # a process that only quantizes: keep scikit-learn (145 MiB) out of transformers'
        # imports. Here and not in the command, so an in-process caller keeps its sklearn.
        from quantstudy.quantize.process import without_sklearn

        without_sklearn()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
