"""A study-results dict built by the real producers from synthetic inputs, shared by the
recommend and report tests.

It runs the evaluate summary (paired bootstrap) on synthetic per-item results, the compare
aggregates on synthetic similarity rows, the bench summariser on synthetic request timings
and the roofline cost table for Llama-3.1-8B, so the shapes under test are exactly what the
stages emit, not hand-written imitations.
"""

from dataclasses import asdict

import numpy as np

from quantstudy.bench.cost import cost_table
from quantstudy.bench.load import RequestResult, summarize
from quantstudy.bench.roofline import weight_bytes
from quantstudy.bench.runner import BenchResult
from quantstudy.compare.metrics import aggregate
from quantstudy.compare.runner import _most_divergent, _per_category
from quantstudy.data.prompts import Prompt
from quantstudy.evaluate import summary
from quantstudy.items import ItemResult
from quantstudy.models.shape import ModelShape
from quantstudy.recommend import BASELINE

SHAPE = "llama-3.1-8b"
# name -> (format, P(keep a right answer), P(fix a wrong one)): FP8 near-lossless, INT8 close,
# INT4 a little lossier, block-FP8 (refused on Ampere) the most accurate of all.
VARIANTS = {"w8a8-fp8": ("w8a8-fp8", 0.995, 0.01), "w8a8-int8": ("w8a8-int8", 0.99, 0.012),
            "w4a16": ("w4a16", 0.975, 0.02), "fp8-block": ("fp8-block", 1.0, 0.02)}
# name -> (per-token KL, P(top-1 agrees)): the fidelity signals, 4-bit far from BF16.
FIDELITY = {"w8a8-fp8": (0.005, 0.97), "w8a8-int8": (0.008, 0.96), "w4a16": (0.08, 0.85), "fp8-block": (0.004, 0.98)}
TASKS = {"mmlu": (400, 0.68), "arc_challenge": (300, 0.8), "gsm8k": (250, 0.75), "humaneval": (164, 0.6)}
SCRIPT = "<script>alert('x')</script>"


def items(task, correct):
    return [ItemResult(task, f"{task}-{i}", "A" if c else "B", bool(c), float(c)) for i, c in enumerate(correct)]


def evaluate(rng, seed=0):
    results = {BASELINE: {}, **{n: {} for n in VARIANTS}}
    for task, (n, p) in TASKS.items():
        base = rng.random(n) < p
        results[BASELINE][task] = items(task, base)
        for name, (_, keep, gain) in VARIANTS.items():
            var = np.where(base, rng.random(n) < keep, rng.random(n) < gain)
            results[name][task] = items(task, var)
    ll = -rng.uniform(300, 400, 40)
    results[BASELINE]["ppl"] = [ItemResult("ppl", f"w{i}", "", True, 1.0, loglik=x, tokens=128)
                                for i, x in enumerate(ll)]
    for name in VARIANTS:
        worse = ll - rng.uniform(0, 5, 40)
        results[name]["ppl"] = [ItemResult("ppl", f"w{i}", "", True, 1.0, loglik=x, tokens=128)
                                for i, x in enumerate(worse)]
        kl, top1 = FIDELITY[name]
        results[name]["kl"] = [ItemResult("kl", f"w{i}", "", True, float(rng.random() < top1), extra={"kl": kl})
                               for i in range(40)]
    report = summary.compare(results, list(VARIANTS), seed=seed)
    report["models"] = {n: {"ref": n} for n in results}
    report["settings"] = {"tasks": list(TASKS), "seed": 0}
    return report


def compare(rng):
    prompts = [Prompt(f"p{i}", ("coding", "writing")[i % 2], f"Question {i} <b>bold</b>?", "synthetic")
               for i in range(12)]
    base = [{"text": f"Answer {i}: the baseline says this."} for i in range(12)]
    variants = []
    for k, name in enumerate(VARIANTS):
        gens = [{"text": (SCRIPT if i == 0 else f"Answer {i}: a variant says that.") if i % 3 == 0 else base[i]["text"]}
                for i in range(12)]
        rows = []
        for i in range(12):
            same = gens[i]["text"] == base[i]["text"]
            r = 1.0 if same else float(rng.uniform(0.3, 0.8))
            rows.append({"rouge1": r, "rougeL": r * 0.9 if not same else 1.0, "bertscore": 1.0 if same else 0.8,
                         "sts": 1.0 if same else float(rng.uniform(0.5, 0.95)) - 0.01 * k, "exact_match": same,
                         "first_divergence": 64 if same else int(rng.integers(0, 40)), "baseline_len": 64,
                         "variant_len": 64})
        per_prompt = [{"id": p.id, "category": p.category, **row} for p, row in zip(prompts, rows)]
        variants.append({"name": name, "folder": name, "model_id": name, "scheme": name,
                         "aggregates": aggregate(rows, n_bootstrap=300), "per_category": _per_category(per_prompt),
                         "examples": _most_divergent(prompts, base, gens, rows, 5), "per_prompt": per_prompt,
                         "exact_tokens": True})
    return {"baseline": {"ref": SHAPE}, "variants": variants,
            "settings": {"n_prompts": 12, "max_new_tokens": 64, "bertscore": "all-MiniLM-L6-v2 layer 6"}}


def bench_record(fmt, use_case, profile, latency, n, concurrency=1, scale=1.0):
    prompt, output = 256, 128
    reqs = [RequestResult(prompt, output, prompt, output, start_s=0.0, ttft_s=0.05 * latency,
                          itl_s=0.95 * latency / (output - 1), e2e_s=latency * (1 + 0.02 * i), chunks=output)
            for i in range(n)]
    duration = sum(r.e2e_s for r in reqs) / concurrency
    params = {"concurrency": concurrency} if profile == "concurrent" else {}
    return BenchResult(fmt, fmt, use_case, prompt, output, scale, profile, params, summarize(reqs, duration),
                       {"args": []}, {"engine_host": "local"}, reqs).to_dict()


def measured(scale):
    """bf16 and w4a16 benched on the machine: one sync run and two concurrency levels each."""
    out = []
    for fmt, lat in (("bf16", 3.0), ("w4a16", 1.3)):
        out.append(bench_record(fmt, "instruction-following", "synchronous", lat, 8, scale=scale))
        for conc, slow in ((4, 1.2), (16, 2.5)):
            out.append(bench_record(fmt, "instruction-following", "concurrent", lat * slow, 16, conc, scale=scale))
    return out


def make_study() -> dict:
    from quantstudy.study.jobs import deployment_curves

    """The synthetic study results every recommend and report test starts from."""
    rng = np.random.default_rng(0)
    shape = ModelShape.known(SHAPE)
    formats = ["bf16", *(f for f, _, _ in VARIANTS.values())]
    predicted = [{"shape": SHAPE, "use_case": uc, **asdict(row)}
                 for uc in ("instruction-following", "code-completion")
                 for row in cost_table(shape, formats, ["a6000", "h100"], uc)]
    bf16 = weight_bytes(shape, "bf16")
    return {
        "model": {"ref": "meta-llama/Llama-3.1-8B-Instruct", "name": SHAPE, "params": 8_030_261_248,
                  "notes": [f"chat template applied {SCRIPT}"]},
        "variants": [{"name": n, "format": f, "label": f.upper(), "algorithm": "GPTQ" if "w4" in f else "RTN",
                      "recipe": {"scheme": f}, "size_bytes": int(weight_bytes(shape, f)),
                      "size_vs_bf16": weight_bytes(shape, f) / bf16} for n, (f, _, _) in VARIANTS.items()],
        "evaluate": evaluate(rng),
        "compare": compare(rng),
        "bench": {"measured": measured(scale=1 / 16), "hardware": "cpu-zen4"},
        "predicted": predicted,
        # the deployment's curve per format on the fewest GPUs holding them all, as the study draws it
        "curves": deployment_curves(shape, SHAPE, formats, {"hardware": "a6000", "use_case": "instruction-following"}),
        "deployment": {"hardware": "a6000", "mode": "sync", "use_case": "instruction-following",
                       "latency_slo_s": None, "min_recovery": 0.95, "budget_usd_per_hour": None},
        "provenance": {"quantstudy": "0.1", "time": "2026-01-01T00:00:00Z"},
    }

