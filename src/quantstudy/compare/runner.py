"""The compare stage: how a quantized model's greedy text differs from the baseline's.

`compare_models` generates (or reads from the store) the baseline's and each variant's
answers to the same prompts, scores each variant's answer against the baseline's, and
returns a JSON-able report: per variant the aggregates, per-category means, every prompt's
scores and the most divergent examples. `compare_table` and `side_by_side` render it with
rich; `run_compare_cli` is what `quantstudy compare` calls.

Metrics are recomputed from stored generations on every run (seconds), so a rerun with a
different seed or example count touches no language model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

from quantstudy.compare.generate import DEFAULT_MAX_NEW_TOKENS, generate_cached
from quantstudy.compare.metrics import SIMILARITY, TextSimilarity, aggregate
from quantstudy.compare.verdict import STS_CAVEAT, paper_observation
from quantstudy.data.prompts import PROMPT_FILE, load_prompts
from quantstudy.errors import QuantstudyError
from quantstudy.inference.hf_engine import HFEngine
from quantstudy.inference.loading import load_for_inference, load_model
from quantstudy.inference.served import SERVED_DTYPE, inprocess_record, served
from quantstudy.models.references import resolve_model
from quantstudy.store import ResultStore

LABELS = {"rouge1": "ROUGE-1", "rougeL": "ROUGE-L", "bertscore": "BERTScore", "sts": "STS"}


def compare_models(baseline_ref: str = "smollm2-135m", variant_dirs: Sequence[str | Path] = (),
                   store_path: str | Path = "runs/compare.sqlite", limit: int | None = None,
                   max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, seed: int = 0, progress=None, *,
                   dtype: str = "float32", batch_size: int = 8, n_examples: int = 5, n_bootstrap: int = 2000,
                   prompts_path: str | Path = PROMPT_FILE, similarity: TextSimilarity | None = None,
                   engine_factory=HFEngine, plan=None) -> dict:
    """Generate (cached) and compare; see the module docstring for the report's shape.

    `plan` (an evaluate `ServePlan`): models it serves generate on vLLM and are compared with
    the baseline's vLLM answers; the others in process, against the in-process baseline."""
    from transformers import AutoTokenizer

    variant_dirs = [Path(v) for v in variant_dirs]
    if not variant_dirs:
        raise QuantstudyError("nothing to compare: pass at least one --variant folder")
    names = [v.name for v in variant_dirs]
    if len(set(names)) != len(names):
        raise QuantstudyError("variant folders must have distinct names (they label the results)")
    for v in variant_dirs:
        if not (v / "config.json").is_file():
            raise QuantstudyError(f"variant {v} is not a model folder (no config.json)")
    prompts = load_prompts(limit, prompts_path)
    common = dict(prompts=prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    serves = (lambda name: plan is not None and plan.serves(name))
    engines = {n: ("vllm" if serves(n) else "hf") for n in names}

    with ResultStore(store_path) as store, contextlib.ExitStack() as servers:
        base_folder = resolve_model(baseline_ref)
        tokenizer = AutoTokenizer.from_pretrained(base_folder, trust_remote_code=False)
        records: dict[str, dict] = {}

        def generations(name, folder, how, loader, tok, label):
            """In process (`loader` gives the model) or served (a server started on first need)."""
            if engines.get(name, "hf") == "vllm" or (name == "baseline" and how == "vllm"):
                def start():
                    engine, record = servers.enter_context(served(folder, tok, url=plan.urls.get(name),
                                                                  python=plan.python, log_dir=plan.log_dir))
                    records[f"{name}@vllm"] = record.to_dict()
                    return engine
                model_id = f"{store.fingerprint(folder)}:vllm:{SERVED_DTYPE}"
                gens = generate_cached(store, model_id, start, tok, label=f"{label} (vLLM)",
                                       engine_factory=lambda engine, *_a, **_k: engine, **common)
                servers.close()   # one server at a time
                return model_id, gens
            model_id = f"{store.fingerprint(folder)}:{how}:{dtype}"
            records[f"{name}@hf"] = inprocess_record(how, dtype).to_dict()
            return model_id, generate_cached(store, model_id, loader, tok, label=label, engine_factory=engine_factory,
                                             **common)

        bases = {}
        for engine in sorted(set(engines.values()), key=lambda e: e != "vllm"):
            bases[engine] = generations("baseline", base_folder, "float" if engine == "hf" else "vllm",
                                        lambda: load_model(base_folder, dtype=dtype)[0], tokenizer, "baseline")
        variants = []
        for name, folder in zip(names, variant_dirs):
            var_tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            if var_tokenizer.get_vocab() != tokenizer.get_vocab():
                raise QuantstudyError(f"variant {name} has a different tokenizer from the baseline")
            variant = load_for_inference(folder, dtype)
            var_id, gens = generations(name, folder, variant.how, variant.load, var_tokenizer, name)
            variants.append((name, folder, var_id, variant.label, gens))
    base_id, base = bases.get("hf") or bases["vllm"]

    scorer = similarity or TextSimilarity()
    report = {
        "baseline": {"ref": str(baseline_ref), "folder": str(base_folder), "model_id": base_id,
                     "engines": {e: records.get(f"baseline@{e}") for e in bases}},
        "settings": {"limit": limit, "n_prompts": len(prompts), "max_new_tokens": max_new_tokens, "seed": seed,
                     "dtype": dtype, "batch_size": batch_size, "n_bootstrap": n_bootstrap,
                     "prompts": str(prompts_path), "bertscore": "all-MiniLM-L6-v2 layer 6, not rescaled"},
        "variants": [],
    }
    for name, folder, var_id, scheme, gens in variants:
        _, base = bases[engines[name]]
        rows = scorer.score([g["text"] for g in base], [g["text"] for g in gens],
                            [g["tokens"] for g in base], [g["tokens"] for g in gens])
        per_prompt = [{"id": p.id, "category": p.category, **row} for p, row in zip(prompts, rows)]
        aggregates = aggregate(rows, n_bootstrap=n_bootstrap, seed=seed)
        report["variants"].append({
            "name": name, "folder": str(folder), "model_id": var_id, "scheme": scheme, "engine": engines[name],
            "engine_record": records.get(f"{name}@{engines[name]}"),
            "aggregates": aggregates, "paper_observation": paper_observation(aggregates).to_dict(),
            "per_category": _per_category(per_prompt),
            "examples": _most_divergent(prompts, base, gens, rows, n_examples),
            "per_prompt": per_prompt,
            "exact_tokens": all(g.get("exact_tokens", False) for g in (*base, *gens)),
        })
    return report


def _per_category(per_prompt: list[dict]) -> dict:
    out = {}
    for cat in dict.fromkeys(r["category"] for r in per_prompt):
        rows = [r for r in per_prompt if r["category"] == cat]
        out[cat] = {"n": len(rows), **{m: sum(r[m] for r in rows) / len(rows) for m in SIMILARITY},
                    "exact_match": sum(r["exact_match"] for r in rows) / len(rows)}
    return out


def _most_divergent(prompts, base, gens, rows, k: int) -> list[dict]:
    """The k prompts whose answers differ most in meaning (lowest STS, then ROUGE-L)."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["sts"], rows[i]["rougeL"], prompts[i].id))
    return [{"id": prompts[i].id, "category": prompts[i].category, "prompt": prompts[i].prompt,
             "baseline": base[i]["text"], "variant": gens[i]["text"],
             **{m: rows[i][m] for m in (*SIMILARITY, "first_divergence")}}
            for i in order[:max(0, k)] if not rows[i]["exact_match"]]


# ---- rendering ------------------------------------------------------------------------------

def _ci(stat: dict) -> str:
    lo, hi = stat["ci"]
    return f"{stat['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def compare_table(report: dict):
    """One row per variant: similarity means with 95% intervals, exact match, divergence."""
    from rich.table import Table

    s = report["settings"]
    table = Table(title=f"Text similarity to the baseline ({s['n_prompts']} prompts, greedy, "
                        f"≤{s['max_new_tokens']} new tokens; mean [95% CI])")
    table.add_column("variant")
    for m in SIMILARITY:
        table.add_column(LABELS[m] + ("*" if m == "bertscore" else ""), justify="right")
    table.add_column("exact match", justify="right")
    table.add_column("median first divergence", justify="right")
    for v in report["variants"]:
        a = v["aggregates"]
        fd = a.get("first_divergence")
        table.add_row(v["name"] + (" (vLLM)" if v.get("engine") == "vllm" else ""), *(_ci(a[m]) for m in SIMILARITY), f"{a['exact_match']['mean']:.1%}",
                      "-" if fd is None else f"{fd['median']:.0f} tokens")
    table.caption = ("*BERTScore with all-MiniLM-L6-v2 (layer 6, no rescaling): not on the scale of "
                     "published RoBERTa-large BERTScores")
    return table


def side_by_side(report: dict, k: int = 3):
    """The k most divergent examples of each variant: prompt, baseline and variant text."""
    from rich.console import Group
    from rich.table import Table

    parts = []
    for v in report["variants"]:
        for ex in v["examples"][:k]:
            t = Table(title=f"{v['name']} · {ex['id']} ({ex['category']}): STS {ex['sts']:.2f}, "
                            f"ROUGE-L {ex['rougeL']:.2f}, diverges at token {ex['first_divergence']}",
                      show_lines=True, expand=True, title_justify="left")
            t.add_column("baseline", ratio=1)
            t.add_column(v["name"], ratio=1)
            t.add_row(f"[dim]{_clip(ex['prompt'], 300)}[/]", "")
            t.add_row(_escape(ex["baseline"]), _escape(ex["variant"]))
            parts.append(t)
    return Group(*parts)


def _clip(text: str, n: int) -> str:
    return _escape(text if len(text) <= n else text[:n] + "…")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def run_compare_cli(model: str, variants: Sequence[str | Path], store: str | Path = "runs/compare.sqlite",
                    limit: int | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, seed: int = 0,
                    out: str | Path | None = "runs/compare.json", examples: int = 3, batch_size: int = 8,
                    dtype: str = "float32", console=None, plan=None) -> dict:
    """Run the stage with a progress bar, print the table and examples, write the JSON report."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True,
                  disable=not Console(stderr=True).is_terminal) as progress:
        report = compare_models(model, variants, store, limit=limit, max_new_tokens=max_new_tokens, seed=seed,
                                progress=progress, dtype=dtype, batch_size=batch_size,
                                n_examples=max(examples, 5), plan=plan)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1))
    console.print(compare_table(report))
    console.print("The paper's \"small models change wording but keep meaning\" (" + STS_CAVEAT + "):")
    for v in report["variants"]:
        console.print(f"  {_escape(v['name'])}: {_escape(v['paper_observation']['text'])}")
    if examples > 0:
        console.print(side_by_side(report, examples))
    if out:
        console.print(f"report: {out}   store: {store}")
    return report
