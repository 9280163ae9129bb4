"""Compare stage: prompt set, text-similarity metrics, cached generations, variant ordering."""

import json
from collections import Counter

import numpy as np
import pytest

from quantstudy.compare.generate import generate_cached
from quantstudy.compare.metrics import TextSimilarity, aggregate, bootstrap_indices, first_divergence, mean_interval
from quantstudy.data.prompts import CATEGORIES, Prompt, load_prompts
from quantstudy.inference.requests import Generation
from quantstudy.compare.verdict import PARAPHRASE_STS, measure_paraphrase_sts, observation_summary, paper_observation
from quantstudy.errors import QuantstudyError
from quantstudy.store import ResultStore

BASE = ("Water boils at 100 degrees Celsius at sea level, but at higher altitudes it boils at a lower "
        "temperature because the air pressure is lower.")
# Same meaning, different words and word order.
PARAPHRASE = ("At sea level the boiling point of water is 100 °C; up in the mountains, where atmospheric "
              "pressure drops, water starts boiling sooner, at a cooler temperature.")
UNRELATED = ("The French Revolution began in 1789 when anger at the monarchy and a financial crisis led "
             "Parisians to storm the Bastille.")


@pytest.fixture(scope="module")
def sim():
    return TextSimilarity()


# ---- prompt set ----------------------------------------------------------------------------

def test_prompt_set_is_large_balanced_and_well_formed():
    prompts = load_prompts()
    assert len(prompts) >= 200
    assert len({p.id for p in prompts}) == len(prompts)
    assert set(p.category for p in prompts) == set(CATEGORIES)
    sources = Counter(p.source for p in prompts)
    assert set(sources) == {"quantstudy", "gsm8k", "humaneval", "arc"}
    assert sources["quantstudy"] >= 100  # a good share written for the project
    # Any prefix is a balanced mix: --limit 30 covers every category about equally.
    first = Counter(p.category for p in load_prompts(30))
    assert set(first) == set(CATEGORIES) and max(first.values()) - min(first.values()) <= 1
    assert all(p.prompt.startswith("Write a Python function `") for p in prompts if p.source == "humaneval")


def test_sourced_prompts_avoid_the_calibration_set():
    from quantstudy.data.text import instruct_conversations

    calibration = {conv[0]["content"] for conv in instruct_conversations(heldout=False)}
    for p in load_prompts():
        if p.source in ("gsm8k", "arc"):
            question = p.prompt.split("\n\n", 1)[1]
            if p.source == "arc":  # the options were appended after the question
                question = question.rsplit("\nA. ", 1)[0]
            assert question not in calibration, p.id


def test_bad_prompt_file_is_one_line_error(tmp_path):
    path = tmp_path / "p.jsonl"
    row = {"id": "a", "category": "writing", "prompt": "x", "source": "quantstudy"}
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(QuantstudyError, match="duplicate"):
        load_prompts(path=path)


# ---- metrics -------------------------------------------------------------------------------

def test_identical_outputs_score_exactly_one(sim):
    texts = [BASE, "def f(x):\n    return x * 2\n", "{}", "", "Ünïcödé — 東京 ✓"]
    rows = sim.score(texts, list(texts), [[1, 2, 3]] * len(texts), [[1, 2, 3]] * len(texts))
    for row in rows:
        assert all(row[m] == 1.0 for m in ("rouge1", "rougeL", "bertscore", "sts")), row
        assert row["exact_match"] and row["first_divergence"] == 3


def test_paraphrase_keeps_meaning_and_unrelated_loses_everything(sim):
    para, unrel = sim.score([BASE, BASE], [PARAPHRASE, UNRELATED])
    assert para["sts"] > 0.8 and para["rougeL"] < 0.5, para      # measured: STS 0.87, ROUGE-L 0.27
    assert unrel["sts"] < 0.3 and unrel["rougeL"] < 0.2, unrel   # measured: STS ~0.1
    assert unrel["bertscore"] < para["bertscore"]
    assert not para["exact_match"] and not unrel["exact_match"]


def test_identity_guard_catches_a_broken_scorer(sim, monkeypatch):
    # An "identical" pair the scorer rates 0.9 means the scorer is wrong, not the texts.
    monkeypatch.setattr(sim, "sts", lambda b, v: [0.9] * len(b))
    with pytest.raises(QuantstudyError, match="STS of two identical texts"):
        sim.score([BASE], [BASE])
    assert sim.score([BASE], [UNRELATED])[0]["sts"] == 0.9  # different texts are not touched


def test_first_divergence_on_token_lists():
    assert first_divergence([5, 6, 7, 8], [5, 6, 9, 8]) == 2
    assert first_divergence([5, 6, 7], [4, 6, 7]) == 0
    assert first_divergence([5, 6, 7], [5, 6, 7]) == 3          # identical: the length
    assert first_divergence([5, 6], [5, 6, 7, 8]) == 2          # one stopped early: prefix length
    assert first_divergence([], [1]) == 0


def test_bootstrap_interval_contains_mean_and_is_seeded():
    rng = np.random.default_rng(1)
    values = rng.uniform(0.3, 1.0, size=40)
    idx = bootstrap_indices(len(values), 2000, seed=7)
    stat = mean_interval(values, idx)
    assert stat["ci"][0] < stat["mean"] < stat["ci"][1]
    assert stat["mean"] == pytest.approx(values.mean())
    assert mean_interval(values, bootstrap_indices(40, 2000, seed=7)) == stat            # same seed, same interval
    assert mean_interval(values, bootstrap_indices(40, 2000, seed=8))["ci"] != stat["ci"]
    assert mean_interval([0.5] * 10, bootstrap_indices(10, 100, 0))["ci"] == [0.5, 0.5]  # no spread


def test_aggregate_rates_and_median():
    rows = [{"rouge1": r, "rougeL": r, "bertscore": r, "sts": r, "exact_match": r == 1.0,
             "first_divergence": fd, "baseline_len": 10, "variant_len": 10}
            for r, fd in [(1.0, 10), (0.5, 2), (0.25, 0), (1.0, 10)]]
    agg = aggregate(rows, n_bootstrap=500, seed=0)
    assert agg["exact_match"]["mean"] == 0.5
    assert agg["first_divergence"]["median"] == 6.0 and agg["first_divergence"]["never_diverged"] == 2
    for m in ("rouge1", "rougeL", "bertscore", "sts"):
        assert agg[m]["mean"] == pytest.approx(0.6875)
        assert agg[m]["ci"][0] < agg[m]["mean"] < agg[m]["ci"][1]


# ---- the paper's observation ---------------------------------------------------------------

def _rows(pairs):
    """Per-prompt rows from (ROUGE-L, STS) pairs; the other metrics follow ROUGE-L."""
    return [{"rouge1": r, "rougeL": r, "bertscore": r, "sts": s, "exact_match": r == s == 1.0} for r, s in pairs]


def test_paper_observation_judges_by_the_interval_not_the_mean():
    rng = np.random.default_rng(0)
    n = 60
    # reworded, meaning kept: ROUGE-L ~0.45 (the paper's 8B), STS tight around 0.93
    reworded = aggregate(_rows(zip(rng.uniform(0.3, 0.6, n), rng.uniform(0.90, 0.96, n))), 1000, seed=0)
    obs = paper_observation(reworded)
    assert (obs.holds, obs.wording, obs.meaning) == (True, "changed", "kept"), obs.text
    # meaning lost: STS well below the paraphrase level
    lost = aggregate(_rows(zip(rng.uniform(0.1, 0.4, n), rng.uniform(0.4, 0.7, n))), 1000, seed=0)
    assert paper_observation(lost).holds is False and paper_observation(lost).meaning == "changed"
    # the same STS mean, straddling the level: a mean above it is not enough
    wide = aggregate(_rows([(0.4, 0.99), (0.4, 0.7)] * 4), 1000, seed=0)
    assert wide["sts"]["ci"][0] < PARAPHRASE_STS < wide["sts"]["ci"][1] and wide["sts"]["mean"] > PARAPHRASE_STS
    assert paper_observation(wide).holds is None and "more prompts" in paper_observation(wide).text
    # identical answers: meaning and wording both kept
    same = aggregate(_rows([(1.0, 1.0)] * 10), 100, seed=0)
    assert (paper_observation(same).holds, paper_observation(same).wording) == (True, "kept")
    summary = observation_summary([("INT8", reworded), ("INT4", lost), ("FP8", wide)])
    assert "holds for INT8" in summary and "does not hold for INT4" in summary and "undecided for FP8" in summary


def test_paraphrase_level_is_what_the_scorer_gives_mrpc_paraphrases(sim):
    # The bar for "meaning kept" is a measurement of our own scorer, not a number from the paper.
    level = measure_paraphrase_sts(sim)
    assert level["paraphrase"]["n"] == 279 and level["not_paraphrase"]["n"] == 129
    assert level["paraphrase"]["mean"] == pytest.approx(PARAPHRASE_STS, abs=0.002)
    assert level["not_paraphrase"]["mean"] < PARAPHRASE_STS - 0.1   # the bar separates the two kinds


# ---- cached generation (stub model) --------------------------------------------------------

class _PlainTokenizer:
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


class _CountingBackend:
    requests = 0

    def __init__(self, model, tokenizer, batch_size=8, progress=False):
        self.model = model

    def generate(self, requests):
        _CountingBackend.requests += len(requests)
        return [Generation(f"{self.model}:{r.prompt}", 2, (len(r.prompt), r.max_new_tokens)) for r in requests]


def test_generations_are_cached_per_prompt(tmp_path):
    prompts = [Prompt(f"p{i}", "writing", f"prompt {i}", "quantstudy") for i in range(5)]
    loads = []

    def loader():
        loads.append(1)
        return "m"

    with ResultStore(tmp_path / "s.sqlite") as store:
        run = lambda ps, n=16: generate_cached(store, "model-a", loader, _PlainTokenizer(), ps, max_new_tokens=n,
                                               batch_size=2, engine_factory=_CountingBackend)
        first = run(prompts[:3])
        assert _CountingBackend.requests == 3 and len(loads) == 1
        assert first[0] == {"text": "m:prompt 0", "tokens": [8, 16], "exact_tokens": True}
        assert run(prompts[:3]) == first
        assert _CountingBackend.requests == 3 and len(loads) == 1   # nothing regenerated, no model loaded
        assert run(prompts)[:3] == first
        assert _CountingBackend.requests == 5                       # only the two new prompts
        run(prompts[:1], n=32)
        assert _CountingBackend.requests == 6                       # another token limit is another result
        assert store.count("compare-generation") == 6


# ---- the real thing ------------------------------------------------------------------------

@pytest.mark.slow
def test_int8_variant_diverges_less_than_int4_and_reruns_hit_the_cache(smollm2, tmp_path):
    from quantstudy.inference.hf_engine import HFEngine
    from quantstudy.compare.runner import compare_models, compare_table, side_by_side
    from quantstudy.quantize.pipeline import quantize_loaded
    from quantstudy.schemes import get_scheme

    model, tokenizer, source = smollm2
    dirs = [tmp_path / "w8a8-int8", tmp_path / "w4a16-g64"]
    quantize_loaded(model, tokenizer, "smollm2-135m", source, get_scheme("w8a8-int8"), dirs[0])
    quantize_loaded(model, tokenizer, "smollm2-135m", source, get_scheme("w4a16", group_size=64), dirs[1])

    calls = []

    class Counting(HFEngine):
        def generate(self, requests):
            calls.append(len(requests))
            return super().generate(requests)

    sim = TextSimilarity()
    run = lambda: compare_models("smollm2-135m", dirs, tmp_path / "store.sqlite", limit=8, max_new_tokens=48,
                                 seed=0, similarity=sim, engine_factory=Counting)
    report = run()
    assert sum(calls) == 3 * 8                       # baseline + two variants, each prompt once
    int8, int4 = (v["aggregates"] for v in report["variants"])
    assert all(v["exact_tokens"] for v in report["variants"])
    # W8A8-INT8 RTN stays closer to the baseline than 4-bit weights do.
    assert int8["rougeL"]["mean"] > int4["rougeL"]["mean"]
    assert int8["sts"]["mean"] > int4["sts"]["mean"]
    assert int8["first_divergence"]["median"] >= int4["first_divergence"]["median"]

    again = run()
    assert sum(calls) == 3 * 8                       # second call: everything from the store
    assert [v["aggregates"] for v in again["variants"]] == [int8, int4]
    compare_table(report), side_by_side(report, 2)   # renders without error
