"""recommend + report on a study-results dict built by the real producers from synthetic inputs.

The fixture runs the evaluate summary (paired bootstrap) on synthetic per-item results, the
compare aggregates on synthetic similarity rows, the bench summariser on synthetic request
timings and the roofline cost table for Llama-3.1-8B, so the shapes under test are exactly
what the stages emit, not hand-written imitations.
"""

import copy
import csv
import html
import io
import json
import re
from dataclasses import asdict

import numpy as np
import pytest

from quantstudy.bench.cost import cost_table
from quantstudy.bench.load import RequestResult, summarize
from quantstudy.bench.roofline import weight_bytes
from quantstudy.bench.runner import BenchResult
from quantstudy.compare.metrics import aggregate
from quantstudy.data.prompts import Prompt
from quantstudy.compare.runner import _most_divergent, _per_category
from quantstudy.compare.verdict import paper_observation
from quantstudy.evaluate import summary
from quantstudy.items import ItemResult
from quantstudy.models.shape import ModelShape
from quantstudy.schemes import PRESETS
from quantstudy.recommend import BASELINE, pareto_front, recommend
from quantstudy.report import build_report

SHAPE = "llama-3.1-8b"
# name -> (format, P(keep a right answer), P(fix a wrong one)): FP8 near-lossless, INT8 close,
# INT4 a little lossier, block-FP8 (refused on Ampere) the most accurate of all.
VARIANTS = {"w8a8-fp8": ("w8a8-fp8", 0.995, 0.01), "w8a8-int8": ("w8a8-int8", 0.99, 0.012),
            "w4a16": ("w4a16", 0.975, 0.02), "fp8-block": ("fp8-block", 1.0, 0.02)}
# name -> (per-token KL, P(top-1 agrees)): the fidelity signals, 4-bit far from BF16.
FIDELITY = {"w8a8-fp8": (0.005, 0.97), "w8a8-int8": (0.008, 0.96), "w4a16": (0.08, 0.85), "fp8-block": (0.004, 0.98)}
TASKS = {"mmlu": (400, 0.68), "arc_challenge": (300, 0.8), "gsm8k": (250, 0.75), "humaneval": (164, 0.6)}
SCRIPT = "<script>alert('x')</script>"


def _items(task, correct):
    return [ItemResult(task, f"{task}-{i}", "A" if c else "B", bool(c), float(c)) for i, c in enumerate(correct)]


def _evaluate(rng, seed=0):
    results = {BASELINE: {}, **{n: {} for n in VARIANTS}}
    for task, (n, p) in TASKS.items():
        base = rng.random(n) < p
        results[BASELINE][task] = _items(task, base)
        for name, (_, keep, gain) in VARIANTS.items():
            var = np.where(base, rng.random(n) < keep, rng.random(n) < gain)
            results[name][task] = _items(task, var)
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


def _compare(rng):
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


def _bench_record(fmt, use_case, profile, latency, n, concurrency=1, scale=1.0):
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
        out.append(_bench_record(fmt, "instruction-following", "synchronous", lat, 8, scale=scale))
        for conc, slow in ((4, 1.2), (16, 2.5)):
            out.append(_bench_record(fmt, "instruction-following", "concurrent", lat * slow, 16, conc, scale=scale))
    return out


@pytest.fixture(scope="module")
def study():
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
        "evaluate": _evaluate(rng),
        "compare": _compare(rng),
        "bench": {"measured": measured(scale=1 / 16), "hardware": "cpu-zen4"},
        "predicted": predicted,
        "deployment": {"hardware": "a6000", "mode": "sync", "use_case": "instruction-following",
                       "latency_slo_s": None, "min_recovery": 0.95, "budget_usd_per_hour": None},
        "provenance": {"quantstudy": "0.1", "time": "2026-01-01T00:00:00Z"},
    }


def _recovery(study, name):
    return study["evaluate"]["average"][name]["recovery"]


# ---- recommend --------------------------------------------------------------------------------

def _ci(study, name):
    return study["evaluate"]["average"][name]["recovery_ci"]


def test_sync_a6000_picks_w4a16_where_its_whole_interval_clears_the_bar(study):
    bar = _ci(study, "w4a16")[0] - 0.001
    rec = recommend(study, {"min_recovery": bar})
    assert rec.chosen == "w4a16"
    c = rec.candidate("w4a16")
    assert c.evidence == {"average": "meets"} and c.decided_by == "accuracy"
    assert c.source == "predicted" and c.status == "native"   # the bench ran on a CPU, scaled down
    others = [o for o in rec.candidates if o.feasible and o.name != "w4a16"]
    assert all(o.queries_per_usd <= c.queries_per_usd for o in others)
    text = rec.explanation
    lo, hi = (100 * x for x in c.recovery_ci)
    assert text.startswith(f"W4A16 meets the floor (average {100 * bar:.1f}%) on accuracy: ")   # leads with evidence
    assert f"[{lo:.1f}, {hi:.1f}]" in text and f"{c.items} items per task" in text
    assert f"{c.queries_per_usd:,.0f}" in text and "predicted" in text and "× BF16" in text


def test_a_point_estimate_inside_its_interval_does_not_decide(study):
    """A floor inside w4a16's interval: unresolved on accuracy. Its fidelity is far from BF16,
    so it is ruled out as unresolved (with the items that would resolve it); once its
    fidelity is close it is chosen on fidelity, and the text says so first."""
    lo, hi = _ci(study, "w4a16")
    bar = (lo + hi) / 2 + 0.002            # just above the point: the point alone would fail it
    rec = recommend(study, {"min_recovery": bar})
    w4 = rec.candidate("w4a16")
    assert w4.evidence == {"average": "unresolved"} and not w4.feasible and w4.decided_by == ""
    assert any("unresolved at" in r and "KL 0.080" in r for r in w4.reasons)
    assert w4.items_to_resolve["average"] > w4.items
    assert "unresolved" in rec.explanation and "would resolve" in rec.explanation
    close = copy.deepcopy(study)
    close["evaluate"]["tasks"]["kl"]["variants"]["w4a16"].update(kl=0.005, kl_ci=[0.004, 0.006], top1_ci=[0.95, 0.99])
    rec = recommend(close, {"min_recovery": bar})
    w4 = rec.candidate("w4a16")
    assert rec.chosen == "w4a16" and w4.decided_by == "fidelity" and w4.feasible
    assert rec.explanation.startswith("W4A16's accuracy is unresolved at")
    assert "KL 0.005 [0.004, 0.006]" in rec.explanation


def test_a_noisy_recovery_above_100_is_no_gain_and_never_outranks_a_resolved_one(study):
    noisy = copy.deepcopy(study)
    agg = noisy["evaluate"]["average"]["w4a16"]
    agg.update(recovery=1.06, recovery_ci=[0.95, 1.17])
    for bar in (0.97, 0.99):
        rec = recommend(noisy, {"min_recovery": bar})
        w4 = rec.candidate("w4a16")
        assert w4.evidence == {"average": "unresolved"} and not w4.feasible
        resolved = [c.name for c in rec.candidates if c.feasible]
        assert resolved and all(rec.ranking.index(n) < rec.ranking.index("w4a16") for n in resolved)
        assert rec.chosen != "w4a16"
    # On the Pareto front 106% counts as 100%: it cannot dominate BF16 on accuracy.
    rec = recommend(noisy, {"min_recovery": 0.9})
    assert "w4a16" in rec.pareto and rec.ranking[0] == rec.chosen


def test_a_degraded_perplexity_is_a_caveat_the_accuracy_average_cannot_hide(study):
    bar = _ci(study, "w4a16")[0] - 0.001
    worse = copy.deepcopy(study)
    ppl = worse["evaluate"]["tasks"]["ppl"]["variants"]["w4a16"]
    ppl.update(recovery=0.74, verdict="degraded")
    rec = recommend(worse, {"min_recovery": bar})
    assert rec.chosen == "w4a16"   # the constraint is on accuracy; the loss is still said
    assert any(w.startswith("ppl recovery 74.0% is degraded") for w in rec.candidate("w4a16").warnings)
    assert "ppl recovery 74.0% is degraded" in rec.explanation
    ppl.update(recovery=0.99, verdict="within noise")
    assert not any("ppl" in w for w in recommend(worse, {"min_recovery": bar}).candidate("w4a16").warnings)


def test_answers_whose_meaning_moves_are_a_caveat(study):
    moved = copy.deepcopy(study)
    agg = next(v for v in moved["compare"]["variants"] if v["name"] == "w4a16")["aggregates"]
    bar = _ci(study, "w4a16")[0] - 0.001
    agg["sts"] = {"mean": 0.70, "ci": [0.62, 0.77]}     # whole interval below the paraphrase level
    rec = recommend(moved, {"min_recovery": bar})
    assert rec.chosen == "w4a16" and "meaning moves from BF16's (STS 0.70 [0.62, 0.77]" in rec.explanation
    agg["sts"] = {"mean": 0.86, "ci": [0.80, 0.91]}     # straddles it: undecided, no caveat
    assert not any("meaning" in w for w in recommend(moved, {"min_recovery": bar}).candidate("w4a16").warnings)


def test_a_bar_above_w4a16s_interval_rules_it_out_as_resolved_and_picks_one_that_clears_it(study):
    bar = _ci(study, "w4a16")[1] + 0.001
    rec = recommend(study, {"min_recovery": bar})
    assert rec.chosen not in (None, "w4a16")
    chosen = rec.candidate(rec.chosen)
    assert chosen.recovery_ci[0] >= bar and chosen.decided_by == "accuracy"
    w4 = rec.candidate("w4a16")
    assert not w4.feasible and w4.evidence == {"average": "below"}
    assert any("average recovery" in r and "is below" in r for r in w4.reasons)
    assert "W4A16" in rec.explanation and "recovery" in rec.explanation and "ruled out" in rec.explanation


def _w8a8(fmt):
    """8-bit weights and 8-bit activations (per-channel FP8/INT8, or block FP8)."""
    scheme = PRESETS.get(fmt)
    return bool(scheme and scheme.activations and scheme.weights.num_bits == 8 and scheme.activations.num_bits == 8)


def test_async_h100_picks_w8a8_where_it_serves_most_per_dollar(study):
    rec = recommend(study, {"hardware": "H100", "mode": "async", "min_recovery": 0.9})
    feasible = [c for c in rec.candidates if c.feasible]
    best = max(c.queries_per_usd for c in feasible)
    top = [c for c in feasible if c.queries_per_usd >= best * (1 - 1e-6)]
    assert all(_w8a8(c.fmt) for c in top)        # the roofline's own verdict, checked
    assert _w8a8(rec.candidate(rec.chosen).fmt)
    # FP8 and INT8 tie on Hopper: the tie goes to the one closer to BF16 on the resolved signals
    assert rec.candidate(rec.chosen).fidelity["kl"] == min(c.fidelity["kl"] for c in top)
    assert "async queries/$" in rec.explanation


def test_refused_format_is_never_chosen_even_if_cheapest_and_most_accurate(study):
    rigged = copy.deepcopy(study)
    for row in rigged["predicted"]:
        if row["fmt"] == "fp8-block":   # refused on the A6000; make it look unbeatable anyway
            row.update(gpus=1, usd_per_hour=0.1, latency_s=0.01, sync_queries_per_usd=1e9, async_queries_per_usd=1e9)
    for bar in (0.5, _recovery(study, "w4a16") + 0.001):
        rec = recommend(rigged, {"min_recovery": bar})
        c = rec.candidate("fp8-block")
        assert c.status == "refused" and not c.feasible and rec.chosen != "fp8-block"
        assert "fp8-block" not in rec.pareto


def test_pareto_front_has_no_dominated_candidate_and_holds_the_choice(study):
    def r(c):   # recovery as the front sees it: above 100% is no loss, not a gain
        return min(c.recovery, 1.0)

    for dep in ({}, {"hardware": "h100", "mode": "async", "min_recovery": 0.9},
                {"use_case": "code-completion", "min_recovery": 0.9}):
        rec = recommend(study, dep)
        pts = [c for c in rec.candidates if c.status != "refused" and c.queries_per_usd]
        for name in rec.pareto:
            f = rec.candidate(name)
            assert not any(r(o) >= r(f) and o.queries_per_usd >= f.queries_per_usd
                           and (r(o), o.queries_per_usd) != (r(f), f.queries_per_usd) for o in pts)
        for c in pts:  # everything off the front is dominated by something on it
            if c.name not in rec.pareto:
                assert any(r(rec.candidate(n)) >= r(c) and rec.candidate(n).queries_per_usd
                           >= c.queries_per_usd for n in rec.pareto)
        chosen = rec.candidate(rec.chosen)
        dominated = any(r(o) >= r(chosen) and o.queries_per_usd >= chosen.queries_per_usd
                        and (r(o), o.queries_per_usd) != (r(chosen), chosen.queries_per_usd)
                        for o in pts)
        assert (rec.chosen in rec.pareto) == (not dominated)
        assert pareto_front(rec.candidates) == list(rec.pareto)


def test_measured_figures_are_used_on_matching_hardware_and_marked(study):
    local = copy.deepcopy(study)
    local["bench"] = {"measured": measured(scale=1.0), "hardware": "NVIDIA RTX A6000"}
    rec = recommend(local, {"min_recovery": 0.5})
    assert rec.candidate(BASELINE).source == "measured" and rec.candidate("w4a16").source == "measured"
    assert rec.candidate("w8a8-int8").source == "predicted"
    w4 = rec.candidate("w4a16")
    assert w4.queries_per_usd == pytest.approx(3600 / (w4.latency_s * 0.80))   # $0.80/h A6000, 1 GPU
    slo = recommend(local, {"min_recovery": 0.5, "latency_slo_s": 2.0})    # BF16's measured 3 s is too slow
    assert not slo.candidate(BASELINE).feasible and any("SLO" in r for r in slo.candidate(BASELINE).reasons)


def test_nothing_feasible_says_which_constraint_rules_each_out(study):
    rec = recommend(study, {"min_recovery": 0.5, "budget_usd_per_hour": 0.5})
    assert rec.chosen is None
    for c in rec.candidates:
        assert c.reasons and rec.explanation.count(c.label + ":") >= 1
    assert "budget" in rec.explanation and "refused" in rec.explanation


def test_group_constraint_on_code(study):
    rec = recommend(study, {"min_recovery": {"code": 0.999}})
    for c in rec.candidates:
        lo, hi = c.groups["code"]["ci"]
        assert c.evidence["code"] == ("meets" if lo >= 0.999 else "below" if hi < 0.999 else "unresolved")
        if c.status != "refused":   # w4a16 straddles 99.9% and its KL is far from BF16's
            assert c.feasible == (lo >= 0.999)
    assert rec.candidate(BASELINE).groups["code"]["recovery"] == 1.0


# ---- report -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(study, tmp_path_factory):
    return build_report(study, tmp_path_factory.mktemp("report"))


def _section(page, key):
    m = re.search(rf'<section id="{key}"><h2>[^<]*</h2>(.*?)</section>', page, re.S)
    assert m, key
    return m.group(1)


def test_html_has_every_section_and_one_png_per_plot(built, study):
    page = built["report.html"].read_text()
    for key in ("answer", "model", "variants", "accuracy", "similarity", "performance", "recommendation", "preflight"):
        body = _section(page, key)
        assert re.sub(r"<[^>]+>", "", body).strip() and "Not run in this study" not in body, key
    assert page.count('src="data:image/png;base64,') == 4   # recovery, similarity, latency-throughput, Pareto
    assert not re.search(r'(?:src|href)\s*=\s*"(?!data:|#)', page)
    assert "http" not in " ".join(re.findall(r'(?:src|href)="([^"]*)"', page))
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "fp8-block on a6000" in _section(page, "preflight")
    # the similarity section answers the paper's "wording changes, meaning kept", per variant
    sim = re.sub(r"<[^>]+>", " ", _section(page, "similarity"))
    assert "small models change wording but keep meaning" in sim
    for name in VARIANTS:
        verdict = paper_observation(next(v for v in study["compare"]["variants"]
                                         if v["name"] == name)["aggregates"])
        assert html.escape(verdict.text.split(" — ")[0]) in sim, name


def test_the_report_opens_with_the_answer_in_rows_a_laptop_shows_whole(built, study):
    page = built["report.html"].read_text()
    assert page.index('<section id="answer">') < page.index("<section id=")+1   # the first section
    rec = recommend(study)
    answer = _section(page, "answer")
    assert html.escape(rec.explanation) in answer
    rows = list(csv.DictReader(io.StringIO(built["tables/answer.csv"].read_text())))
    assert [r["candidate"] for r in rows] == list(rec.ranking) and rows[0]["chosen"] == "True"
    text_rows = re.findall(r"<tr>(.*?)</tr>", answer)
    cells = [re.sub(r"<[^>]+>", "", c) for r in text_rows for c in re.findall(r"<td>(.*?)</td>", r)]
    header = re.findall(r"<th>(.*?)</th>", answer)
    assert len(header) <= 9 and all(len(html.unescape(c)) <= 28 for c in cells)   # ~110 characters a row


def test_notes_are_grouped_by_kind_not_one_line_per_task_and_variant(study):
    from quantstudy.report.answer import grouped_notes
    from quantstudy.report.tables import accuracy_notes
    from quantstudy.results import StudyResults

    small = copy.deepcopy(study)   # 30 items a task: every comparison gets its "wide" / "few items" notes
    rng = np.random.default_rng(1)
    results = {BASELINE: {}, "a": {}, "b": {}}
    for task in ("arc_challenge", "hellaswag"):
        base = rng.random(30) < 0.5
        results[BASELINE][task] = _items(task, base)
        for name in ("a", "b"):
            results[name][task] = _items(task, np.where(base, rng.random(30) < 0.9, rng.random(30) < 0.1))
    small["evaluate"] = summary.compare(results, ["a", "b"], seed=0)
    notes = accuracy_notes(StudyResults.from_json(small))
    grouped = grouped_notes(notes)
    assert len(grouped) < len(notes)
    kinds = [g.split(" — ")[0] for g in grouped]
    assert len(set(kinds)) == len(kinds)
    for line in notes:   # every task / variant a note named is still named
        where = line.split(": ")[0]
        assert any(where in g for g in grouped)


def test_the_decision_does_not_move_with_the_evaluation_seed(study):
    """The same per-item outcomes, bootstrap seeds 0, 1, 2: three deployments, one decision each."""
    deployments = ({}, {"hardware": "h100", "mode": "async", "min_recovery": 0.97},
                   {"use_case": "code-completion", "min_recovery": 0.99})
    chosen = []
    for seed in (0, 1, 2):
        reseeded = copy.deepcopy(study)
        reseeded["evaluate"] = _evaluate(np.random.default_rng(0), seed=seed)
        chosen.append([recommend(reseeded, dep).chosen for dep in deployments])
    assert chosen[0] == chosen[1] == chosen[2] and len(set(chosen[0])) >= 2


def test_tables_have_one_row_per_task_and_variant(built, study):
    tasks = list(study["evaluate"]["tasks"]) + ["average"]
    acc_csv = list(csv.DictReader(io.StringIO(built["tables/accuracy.csv"].read_text())))
    assert [r["task"] for r in acc_csv] == tasks
    acc_md = [line for line in built["tables/accuracy.md"].read_text().splitlines() if line.startswith("| ")]
    assert len(acc_md) == 1 + len(tasks)
    sim = list(csv.DictReader(io.StringIO(built["tables/similarity.csv"].read_text())))
    assert [r["variant"] for r in sim] == list(VARIANTS)
    rec = list(csv.DictReader(io.StringIO(built["tables/recommendation.csv"].read_text())))
    assert [r["candidate"] for r in rec] == [BASELINE, *VARIANTS] and sum(r["chosen"] == "True" for r in rec) == 1
    pred = list(csv.DictReader(io.StringIO(built["tables/performance_predicted.csv"].read_text())))
    assert len(pred) == len(study["predicted"])
    meas = built["tables/performance_measured.md"].read_text().splitlines()
    assert sum(line.startswith("| ") for line in meas) == 1 + len(study["bench"]["measured"])
    mmlu = next(r for r in acc_csv if r["task"] == "mmlu")
    want = study["evaluate"]["tasks"]["mmlu"]["variants"]["w4a16"]["recovery"]
    assert float(mmlu["w4a16_recovery"]) == pytest.approx(want, rel=1e-5)


def test_results_json_is_the_input_plus_the_recommendation(built, study):
    data = json.loads(built["results.json"].read_text())
    assert data["recommendation"]["chosen"] == recommend(study).chosen
    assert data["evaluate"]["average"].keys() == study["evaluate"]["average"].keys()


def test_same_input_gives_identical_bytes(study, built, tmp_path):
    again = build_report(copy.deepcopy(study), tmp_path)
    for name, path in built.items():
        assert again[name].read_bytes() == path.read_bytes(), name


def test_missing_stages_say_not_run(study, tmp_path):
    bare = {k: v for k, v in study.items() if k not in ("compare", "bench", "evaluate")}
    bare.update(compare=None, bench=None)
    page = build_report(bare, tmp_path)["report.html"].read_text()
    for key in ("accuracy", "similarity"):
        assert "Not run in this study" in _section(page, key)
    assert "Not run in this study" in _section(page, "performance")          # nothing measured
    assert "no average recovery measured" in _section(page, "recommendation")


# ---- results.json, typed and versioned ------------------------------------------------------------

def test_results_round_trip_through_the_typed_record(built, study):
    from quantstudy.results import SCHEMA_VERSION, StudyResults, load_results

    typed = StudyResults.from_json(study)            # the unversioned (schema 1) shape of the fixture
    assert StudyResults.from_json(typed.to_json()) == typed
    written = json.loads(built["results.json"].read_text())
    assert written["schema_version"] == SCHEMA_VERSION
    assert load_results(built["results.json"]) == typed
    # every measurement is read under one spelling of each field
    assert {p.fmt for p in typed.measured_points()} == {"bf16", "w4a16"}


@pytest.mark.parametrize("content, message", [
    ({"schema_version": 99, "model": {"ref": "m", "name": "m"}}, "schema version 99, written by a newer quantstudy"),
    ([1, 2, 3], "not a results object"),
    ({"variants": []}, "does not fit StudyResults: model"),
    ("{not json", "is not valid JSON"),
])
def test_report_refuses_what_it_cannot_read_in_one_line(content, message, tmp_path):
    from typer.testing import CliRunner

    from quantstudy.cli import app

    path = tmp_path / "results.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "report")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "report").exists()


def test_report_reads_an_older_unversioned_results_file(built, study, tmp_path):
    from typer.testing import CliRunner

    from quantstudy.cli import app

    old = json.loads(built["results.json"].read_text())
    del old["schema_version"]     # as results.json was written before the schema had a version
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    result = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.html").read_text() == built["report.html"].read_text()


def test_recommend_cli_on_a_results_file_and_its_one_line_errors(study, tmp_path):
    from typer.testing import CliRunner

    from quantstudy.cli import app

    path = tmp_path / "results.json"
    path.write_text(json.dumps(study))
    got = CliRunner().invoke(app, ["recommend", str(path), "--hardware", "l40s", "--json"])   # never predicted
    assert got.exit_code == 0, got.output
    rec = json.loads(got.stdout)
    assert rec["deployment"]["hardware"] == "l40s" and all(c["source"] == "predicted" for c in rec["candidates"]
                                                           if c["queries_per_usd"])
    from quantstudy.recommend.costs import with_predictions
    from quantstudy.results import StudyResults

    assert not recommend(study, {"hardware": "l40s"}).chosen        # the study alone has no L40S costs
    added = with_predictions(StudyResults.from_json(study), "l40s", "instruction-following")
    assert rec["chosen"] == recommend(added, {"hardware": "l40s"}).chosen is not None
    for args, message in ((["--hardware", "cpu"], "predicted no CPU"), (["--mode", "later"], "sync or async"),
                          (["--min-recovery", "7"], "fraction of BF16"), (["--use-case", "poetry"], "unknown use case")):
        bad = CliRunner().invoke(app, ["recommend", str(path), *args])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, args
