"""Chain-of-thought diagnostics: per generation, per sampled draw, per task and model, in the report."""

import pytest

from quantstudy.evaluate import cot
from quantstudy.evaluate.registry import EvalContext, get_task
from quantstudy.evaluate.sampling import resolve
from quantstudy.evaluate.tasks import gsm8k
from quantstudy.evaluate.tasks import minerva_math as mm
from quantstudy.inference.requests import Generation


@pytest.fixture(scope="module")
def doc():
    return gsm8k.load_docs(1)[0]          # Janet's ducks: the answer is 18


def score(doc, text, tokens=40):
    return gsm8k.score([doc], [Generation(text, tokens)])[0]


def test_gsm8k_chain_diagnostics(doc):
    gold = gsm8k.target(doc)
    assert gold == "18"
    abandoned = score(doc, "16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars. No, she keeps 2. The answer is 14.")
    assert not abandoned.correct and abandoned.extra["cot"]["abandoned"]
    right = score(doc, "16 - 3 - 4 = 9. 9 * 2 = 18. The answer is 18.")
    assert right.correct and not right.extra["cot"]["abandoned"]
    # 18 only after the (wrong) final answer, or inside a longer number: not reached mid-chain
    late = score(doc, "The answer is 14. Later: 18 or 1800 or 180.")
    assert not late.correct and not late.extra["cot"]["abandoned"]
    thousands = score(doc, "It is 1,8 or $18. The answer is 7.")      # $18 normalises to 18
    assert thousands.extra["cot"]["abandoned"]
    cut = score(doc, "16 - 3 = 13, then", tokens=gsm8k.MAX_NEW_TOKENS)
    assert cut.extra["cot"] == {"tokens": 256, "hit_limit": True, "answer_tokens": None, "abandoned": False}
    text = "9 * 2 = 18. The answer is 18."
    r = score(doc, text + " Q: next question", tokens=60)
    # lm-eval's strict pattern ends in an unescaped "." (any character): the match takes the space too
    assert r.extra["cot"]["answer_tokens"] == round(60 * (len(text) + 1) / len(text + " Q: next question"))


def test_math_chain_diagnostics():
    doc = mm.load_docs(1)[0]
    gold = doc["answer"]
    wrong = f"We find $x = {gold}$, but that fails. So $x=12345$.\nFinal Answer: The final answer is $12345$. " \
            "I hope it is correct."
    r = mm.score([doc], [Generation(wrong, 100)])[0]
    assert not r.correct and r.extra["cot"]["abandoned"] and r.extra["cot"]["answer_tokens"] == 100
    right = f"So $x = {gold}$.\nFinal Answer: The final answer is ${gold}$. I hope it is correct."
    r = mm.score([doc], [Generation(right, 50)])[0]
    assert r.correct and not r.extra["cot"]["abandoned"]
    none = mm.score([doc], [Generation("I am not sure.", mm.MAX_NEW_TOKENS)])[0]
    assert none.extra["cot"] == {"tokens": mm.MAX_NEW_TOKENS, "hit_limit": True, "answer_tokens": None,
                                 "abandoned": False}


class SeedEngine:
    """GSM8K chains by seed: even seeds reach the gold answer and end on it; odd ones state it
    mid-chain, then end on another number."""

    def __init__(self, docs):
        self.gold = {d["question"]: gsm8k.target(d) for d in docs}

    def generate(self, requests):
        out = []
        for r in requests:
            gold = next(g for q, g in self.gold.items() if r.prompt.endswith(f"Q: {q}\nA:"))
            text = f"So {gold}. The answer is {gold}." if r.seed % 2 == 0 else f"So {gold}, no. The answer is -1."
            out.append(Generation(text, 30 + r.seed % 7))
        return out


def test_every_sampled_draw_keeps_its_chain_and_the_task_aggregates_them():
    spec = get_task("gsm8k")
    ctx = EvalContext(tokenizer=None, limit=3, sampling=resolve(1, temperature=0.7, seeds=4))
    docs = spec.load(ctx)
    items = spec.run(SeedEngine(docs), docs, ctx)
    assert all(len(r.extra["cot_draws"]) == 4 for r in items)
    for r in items:   # the draw's chain matches the draw's score
        assert [c["abandoned"] for c in r.extra["cot_draws"]] == [s == 0.0 for s in r.extra["draws"]]
    summary = cot.summarize(items)
    flat = [c for r in items for c in r.extra["cot_draws"]]
    assert summary["chains"] == 12 and summary["items_without"] == 0
    assert summary["abandoned"] == pytest.approx(sum(c["abandoned"] for c in flat) / 12)
    assert summary["mean_tokens"] == pytest.approx(sum(c["tokens"] for c in flat) / 12)
    assert summary["answered"] == 1.0 and summary["hit_limit"] == 0.0


def test_evaluate_report_and_study_report_show_the_chains(doc):
    from quantstudy.evaluate.report_table import chain_table
    from quantstudy.evaluate.summary import compare
    from quantstudy.items import ItemResult

    base = [score(doc, "9 * 2 = 18. The answer is 18.")]
    var = [score(doc, "9 * 2 = 18, so no. The answer is 14.", tokens=gsm8k.MAX_NEW_TOKENS)]
    old = ItemResult(task="gsm8k", item_id="old", prediction="1", correct=False, score=0.0)  # stored before cot
    report = compare({"baseline": {"gsm8k": base + [old]}, "w4": {"gsm8k": var + [old]}}, ["w4"])
    chains = report["tasks"]["gsm8k"]["cot"]
    assert chains["baseline"]["abandoned"] == 0.0 and chains["w4"]["abandoned"] == 1.0
    assert chains["w4"]["hit_limit"] == 1.0 and chains["w4"]["items_without"] == 1
    assert chain_table(report) is not None
    plain = compare({"baseline": {"gsm8k": [old]}, "w4": {"gsm8k": [old]}}, ["w4"])
    assert plain["tasks"]["gsm8k"]["cot"] == {} and chain_table(plain) is None


def test_the_study_report_has_the_chain_table(tmp_path):
    """Where a reasoning task kept diagnostics, the report's accuracy section shows them and
    tables/reasoning.csv has one row per model; the synthetic study has none: 'not run'."""
    import copy
    import csv

    from quantstudy.report import build_report
    from synthetic_study import make_study

    study = make_study()
    plain = build_report(study, tmp_path / "plain")
    assert "Chain of thought" not in plain["report.html"].read_text()
    assert "Not run in this study" in plain["tables/reasoning.md"].read_text()
    with_cot = copy.deepcopy(study)
    diag = {"chains": 12, "items_without": 0, "mean_tokens": 181.0, "mean_answer_tokens": 150.0, "answered": 0.75,
            "hit_limit": 0.25, "abandoned": 1 / 12}
    with_cot["evaluate"]["tasks"]["gsm8k"]["cot"] = {"baseline": diag, "w4a16": {**diag, "abandoned": 0.5}}
    built = build_report(with_cot, tmp_path / "cot")
    page = built["report.html"].read_text()
    assert "Chain of thought" in page and "right answer abandoned %" in page
    rows = list(csv.DictReader(built["tables/reasoning.csv"].open()))
    assert [(r["task"], r["model"], float(r["abandoned"])) for r in rows] == \
        [("gsm8k", "baseline", pytest.approx(1 / 12)), ("gsm8k", "w4a16", 0.5)]


def test_seed_noise_floor_from_the_baseline_against_itself():
    """K draws per item: the baseline's seed halves give the floor; a variant's change whose
    interval reaches it is 'within noise floor', one clearly beyond it keeps its verdict."""
    import numpy as np

    from quantstudy.evaluate.seed_floor import WITHIN_FLOOR, seed_floor
    from quantstudy.evaluate.summary import compare
    from quantstudy.items import ItemResult

    rng = np.random.default_rng(0)

    def sampled(p, n=200, k=4):
        draws = rng.random((n, k)) < p
        return [ItemResult("gsm8k", str(i), "", bool(d.mean() >= 0.5), float(d.mean()),
                           extra={"draws": [float(x) for x in d]}) for i, d in enumerate(draws)]
    # a coin-flip baseline (every item 50% per draw): seeds move it a lot
    noisy = sampled(0.5)
    floor = seed_floor(noisy)
    assert floor["draws"] == 4 and floor["split"] == [2, 2] and 0.01 < floor["floor"] < 0.2
    assert floor["difference_ci"][0] <= floor["difference"] <= floor["difference_ci"][1]
    assert seed_floor([ItemResult("gsm8k", "0", "", True, 1.0)]) is None          # greedy: no floor
    slightly = sampled(0.47)
    collapsed = sampled(0.05)
    report = compare({"baseline": {"gsm8k": noisy}, "small": {"gsm8k": slightly}, "big": {"gsm8k": collapsed}},
                     ["small", "big"])
    assert report["seed_floor"]["gsm8k"]["floor"] == pytest.approx(floor["floor"])
    small, big = report["tasks"]["gsm8k"]["variants"]["small"], report["tasks"]["gsm8k"]["variants"]["big"]
    assert small["verdict"] in ("within noise", WITHIN_FLOOR)
    assert big["verdict"] == "degraded" and big["difference_ci"][1] < -floor["floor"]
    # the same items one draw worse on a fifth of them: the paired interval excludes 0, yet it
    # lies inside what the baseline's own seeds move -> not called degraded
    worse = []
    for i, r in enumerate(noisy):
        d = list(r.extra["draws"])
        if i % 5 == 0 and 1.0 in d:
            d[d.index(1.0)] = 0.0
        worse.append(ItemResult("gsm8k", r.item_id, "", sum(d) / 4 >= 0.5, sum(d) / 4, extra={"draws": d}))
    one = compare({"baseline": {"gsm8k": noisy}, "worse": {"gsm8k": worse}}, ["worse"])["tasks"]["gsm8k"]["variants"]
    c = one["worse"]
    assert c["difference_ci"][1] < 0 and -floor["floor"] <= c["difference_ci"][1]
    assert c["verdict"] == WITHIN_FLOOR and any("seed-to-seed noise floor" in n for n in c["notes"])


def test_the_study_report_states_the_seed_floor(tmp_path):
    import copy

    from quantstudy.report import build_report
    from synthetic_study import make_study

    study = copy.deepcopy(make_study())
    study["evaluate"]["seed_floor"] = {"gsm8k": {"floor": 0.031, "difference": 0.004, "difference_ci": [-0.02, 0.03],
                                                 "draws": 3, "split": [2, 1], "items": 250}}
    page = build_report(study, tmp_path)["report.html"].read_text()
    assert "seed noise floor" in page and "gsm8k ±3.1 (3 draws)" in page
