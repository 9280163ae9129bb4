"""The evaluate stage end to end: baseline and a variant through the results store.

A rerun must compute nothing (every item comes back from the store) and give the same
report; accuracy items pair up one to one; KL is computed against the baseline only.
"""

import json

import pytest
from typer.testing import CliRunner

from quantstudy.cli import app
from quantstudy.evaluate import registry
from quantstudy.evaluate.runner import EvalSettings, evaluate_models
from quantstudy.quantize.pipeline import quantize_loaded
from quantstudy.schemes import get_scheme

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def int8_variant(smollm2, tmp_path_factory):
    model, tokenizer, source = smollm2
    folder = tmp_path_factory.mktemp("variants") / "w8a8-int8"
    quantize_loaded(model, tokenizer, "smollm2-135m", source, get_scheme("w8a8-int8"), folder)
    return folder


def _count_scoring(monkeypatch) -> list[str]:
    """The tasks that score anything from now on: every task's `run` goes through here (the
    scoring step looks tasks up in `scoring`, where this patches them)."""
    calls = []
    real = registry.get_task

    def counting(name):
        spec = real(name)
        return spec.__class__(**{**spec.__dict__, "run": lambda *a, **k: calls.append(name) or spec.run(*a, **k)})
    monkeypatch.setattr("quantstudy.evaluate.scoring.get_task", counting)
    return calls


def test_rerun_reads_every_item_from_the_store(int8_variant, tmp_path, monkeypatch):
    settings = EvalSettings(tasks=("arc_challenge", "ppl", "kl"), limit=3, ppl_seq_len=128, fewshot="zero")
    store = tmp_path / "store.sqlite"
    first = evaluate_models("smollm2-135m", [int8_variant], settings, store)
    tasks = first["tasks"]
    assert tasks["arc_challenge"]["n"] == 3 and set(tasks["arc_challenge"]["variants"]) == {"w8a8-int8"}
    arc = tasks["arc_challenge"]["variants"]["w8a8-int8"]
    assert arc["n"] == 3 and 0 <= arc["flips_right_to_wrong"] + arc["flips_wrong_to_right"] <= 3
    assert any("wide" in note or "items" in note for note in arc["notes"])   # 3 items: the report says so
    ppl = tasks["ppl"]["variants"]["w8a8-int8"]
    assert ppl["n"] == 3 and ppl["variant"] > 1 and ppl["ratio_ci"][0] <= ppl["ratio"] <= ppl["ratio_ci"][1]
    kl = tasks["kl"]["variants"]["w8a8-int8"]
    assert 0 < kl["kl"] < 1 and 0.5 < kl["top1_agreement"] <= 1

    calls = _count_scoring(monkeypatch)
    second = evaluate_models("smollm2-135m", [int8_variant], settings, store)
    assert calls == []
    assert json.dumps(second["tasks"], sort_keys=True) == json.dumps(first["tasks"], sort_keys=True)
    one_more = EvalSettings(tasks=("arc_challenge",), limit=4, ppl_seq_len=128, fewshot="zero")   # the hook sees real work
    evaluate_models("smollm2-135m", [int8_variant], one_more, store)
    assert calls == ["arc_challenge", "arc_challenge"]      # one new item, for the baseline and the variant


@pytest.mark.parametrize("args, message", [
    (["--tasks", "mmlu,nope"], "unknown task 'nope'"),
    (["--tasks", "arc_challenge", "--limit", "0"], "--limit must be at least 1"),
    (["--tasks", "arc_challenge", "--variant", "/nonexistent/ckpt"], "not a quantized checkpoint folder"),
])
def test_bad_evaluate_arguments_are_one_line_errors(args, message, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--store", str(tmp_path / "s.sqlite"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_until_decided_stops_each_task_at_its_decision_and_reruns_from_the_store(int8_variant, tmp_path, monkeypatch):
    """A low floor INT8 clears early; 100% (INT8 is not bit-identical) it cannot: that task
    runs to its budget and says how many items would resolve it. The final sample is each
    task's own, and a rerun computes nothing."""
    store = tmp_path / "store.sqlite"
    easy = EvalSettings(tasks=("arc_challenge", "winogrande"), limit=60, until_decided=True, min_recovery=0.5,
                        round_items=20, fewshot="zero")
    report = evaluate_models("smollm2-135m", [int8_variant], easy, store)
    adaptive = report["adaptive"]
    assert adaptive["floor"] == 0.5 and adaptive["budget"] == 60 and adaptive["round"] == 20
    for task, entry in adaptive["tasks"].items():
        d = entry["variants"]["w8a8-int8"]
        assert d["decision"] == "meets" and d["items"] == entry["limit"] < 60
        assert report["tasks"][task]["n"] == entry["limit"]       # the comparison is on the items it took
    hard = EvalSettings(tasks=("arc_challenge",), limit=40, until_decided=True, min_recovery=1.0, round_items=20,
                        fewshot="zero")
    report = evaluate_models("smollm2-135m", [int8_variant], hard, store)
    d = report["adaptive"]["tasks"]["arc_challenge"]["variants"]["w8a8-int8"]
    assert report["adaptive"]["tasks"]["arc_challenge"]["limit"] == 40 and report["tasks"]["arc_challenge"]["n"] == 40
    if d["decision"] == "unresolved":
        assert d["items_needed"] is None or d["items_needed"] > d["items"]

    calls = _count_scoring(monkeypatch)
    again = evaluate_models("smollm2-135m", [int8_variant], easy, store)
    assert calls == [] and again["adaptive"]["tasks"] == evaluate_models(
        "smollm2-135m", [int8_variant], easy, store)["adaptive"]["tasks"]
