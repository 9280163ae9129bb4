"""recommend on the synthetic study (`synthetic_study`): the decision rule, ranking, Pareto front,
costs, and the `recommend` command."""

import copy
import json

import numpy as np
import pytest

from quantstudy.recommend import BASELINE, pareto_front, recommend
from quantstudy.schemes import PRESETS
from synthetic_study import make_study, measured
from synthetic_study import evaluate as synthetic_evaluate


@pytest.fixture(scope="module")
def study():
    return make_study()


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


def test_the_decision_does_not_move_with_the_evaluation_seed(study):
    """The same per-item outcomes, bootstrap seeds 0, 1, 2: three deployments, one decision each."""
    deployments = ({}, {"hardware": "h100", "mode": "async", "min_recovery": 0.97},
                   {"use_case": "code-completion", "min_recovery": 0.99})
    chosen = []
    for seed in (0, 1, 2):
        reseeded = copy.deepcopy(study)
        reseeded["evaluate"] = synthetic_evaluate(np.random.default_rng(0), seed=seed)
        chosen.append([recommend(reseeded, dep).chosen for dep in deployments])
    assert chosen[0] == chosen[1] == chosen[2] and len(set(chosen[0])) >= 2




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
