"""The study orchestrator (first cut): the stages that exist, run over every preset.

Today that is quantize -> checkpoint -> reload through the checkpoint -> greedy sample,
summarised as size, SQNR and how long the greedy text agrees with the baseline's.
Evaluation, comparison and benchmarking join as their stages land. A checkpoint
already on disk is reused, so a rerun only does what is missing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from quantstudy.errors import QuantstudyError
from quantstudy.models.loading import load_model
from quantstudy.quantize.checkpoint import load_fake_quant_model, read_checkpoint_info
from quantstudy.quantize.model import aggregate_sqnr_db
from quantstudy.quantize.pipeline import greedy_sample, quantize_loaded
from quantstudy.schemes import PRESETS, Strategy, get_scheme

SAMPLE_PROMPT = "Explain in two sentences why the sky is blue."
SAMPLE_TOKENS = 32


def _select(scheme_names: str, group_size: int):
    names = list(PRESETS) if scheme_names.strip() == "all" else [n.strip() for n in scheme_names.split(",") if n.strip()]
    out = []
    for name in names:
        s = get_scheme(name)
        if s.weights.strategy in (Strategy.GROUP, Strategy.BLOCK):
            s = s.with_group_size(group_size)
        out.append(s)
    return out


def _agreeing_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def run_study(model_ref: str, out: Path, group_size: int, scheme_names: str, console: Console,
              progress_factory) -> Path:
    torch.manual_seed(0)
    chosen = _select(scheme_names, group_size)
    out.mkdir(parents=True, exist_ok=True)
    with progress_factory() as progress:
        task = progress.add_task("study", total=len(chosen) + 1, item="loading baseline")
        model, tokenizer, source = load_model(model_ref, dtype="float32")
        base_bytes = _dir_bytes(source)
        base_ids, base_text = greedy_sample(model, tokenizer, SAMPLE_PROMPT, SAMPLE_TOKENS)
        progress.update(task, advance=1)
        rows = [{"scheme": "baseline", "label": "FP32 (source)", "bytes": base_bytes, "sqnr_db": None,
                 "agree_tokens": len(base_ids), "sample": base_text, "checkpoint": str(source)}]
        for scheme in chosen:
            folder = out / scheme.name
            progress.update(task, item=f"{scheme.name}: quantize")
            start = time.perf_counter()
            if not (folder / "config.json").is_file():
                quantize_loaded(model, tokenizer, model_ref, source, scheme, folder)
            info = read_checkpoint_info(folder)
            sqnr = aggregate_sqnr_db([(r["signal_energy"], float(r["sqnr_db"])) for r in info.recipe["layers"]])
            progress.update(task, item=f"{scheme.name}: reload + generate")
            qmodel, qtok, _ = load_fake_quant_model(folder, dtype=torch.float32)
            ids, text = greedy_sample(qmodel, qtok, SAMPLE_PROMPT, SAMPLE_TOKENS)
            rows.append({"scheme": scheme.name, "label": scheme.label, "bytes": _dir_bytes(folder),
                         "sqnr_db": sqnr, "agree_tokens": _agreeing_prefix(ids, base_ids), "sample": text,
                         "checkpoint": str(folder), "seconds": round(time.perf_counter() - start, 2)})
            progress.update(task, advance=1)
    if len(rows) < 2:
        raise QuantstudyError("no scheme selected")

    table = Table(title=f"quantstudy: {model_ref} — RTN, group/block {group_size}, greedy {SAMPLE_TOKENS} tokens")
    for col in ("scheme", "format", "weights MiB", "vs BF16", "SQNR dB", "= baseline"):
        table.add_column(col, no_wrap=True)
    bf16_bytes = base_bytes / 2  # the source folder is float32
    for r in rows:
        sq = "-" if r["sqnr_db"] is None else ("exact" if r["sqnr_db"] == float("inf") else f"{r['sqnr_db']:.1f}")
        table.add_row(r["scheme"], r["label"], f"{r['bytes'] / 2**20:.1f}", f"{bf16_bytes / r['bytes']:.2f}x", sq,
                      f"{r['agree_tokens']}/{len(base_ids)} tok")
    console.print(table)
    console.print(f"[bold]greedy samples[/] for: {SAMPLE_PROMPT}")
    for r in rows:
        console.print(f"  [cyan]{r['scheme']:>10}[/] {r['sample'].strip()}", highlight=False)
    console.print("[dim]'= baseline': greedy tokens identical to the float model's before the first change. "
                  "SmolLM2-135M ships as a Q4_1 GGUF: every group of 32 weights sits on a 16-level grid with a "
                  "float offset, which INT4 with integer zero points cannot store, so INT4 errors here are "
                  "those of ordinary weights (measured, see README).[/]")
    summary = out / "summary.json"
    summary.write_text(json.dumps({"model": model_ref, "prompt": SAMPLE_PROMPT, "rows": rows}, indent=2,
                                  default=str))
    console.print(f"summary: {summary}")
    return summary
