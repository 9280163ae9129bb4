"""RULER's multi-key, multi-value, multi-query NIAH and variable tracking (tasks/ruler_synthetic.py):
prompts hold exactly their needles at their depths and fit their lengths, items are seeded, and
scoring is RULER's string_match_all. Tokenizer only: no model forward."""

import re

import pytest

from quantstudy.evaluate.registry import RULER_SYNTHETIC, get_task
from quantstudy.evaluate.tasks import ruler, ruler_synthetic as rs
from quantstudy.inference.requests import Generation

LENGTHS = (256, 1024, 4096)
NEEDLE_HEAD = "One of the special magic numbers for"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from quantstudy.models.references import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))


@pytest.fixture(scope="module")
def built(tokenizer):
    return {name: rs.build_items(name, tokenizer, max_context=2048, per_cell=2, lengths=LENGTHS)
            for name in rs.TASK_NAMES}


def n_tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def strip(text, needles):
    for needle in needles:
        text = text.replace(needle, "")
    return text


def test_the_registry_names_them_and_ruler_keeps_its_single_needle():
    assert set(RULER_SYNTHETIC) == set(rs.TASK_NAMES) == {"ruler_mk", "ruler_mv", "ruler_mq", "ruler_vt"}
    versions = {get_task(name).version for name in RULER_SYNTHETIC}
    assert len(versions) == 4 and get_task("ruler").version == ruler.VERSION == "niah_single-v2"
    assert ruler.grid(2048) == ([512, 1024], list(ruler.DEFAULT_DEPTHS))   # default margin unchanged


def test_prompts_hold_exactly_their_needles_at_their_depths(built, tokenizer):
    for name, items in built.items():
        fam = rs.FAMILIES[name]
        assert {i["length"] for i in items} == {256, 1024}, name    # 4096 + margin exceeds 2048
        assert len({i["id"] for i in items}) == len(items) == 4
        for item in items:
            context, needles = item["context"], item["needles"]
            assert n_tokens(tokenizer, context) == pytest.approx(item["length"], abs=8), (name, item["id"])
            # depth: where the needle sits in the haystack without the needles, to the nearest
            # sentence end (long WikiText sentences: up to ~8% of 1024 tokens, more of 256)
            tolerance = 0.15 if item["length"] < 1024 else 0.1
            for needle, depth in zip(needles, item["depths"]):
                assert context.count(needle) == 1, (name, needle)
                where = len(strip(context[:context.find(needle)], needles)) / len(strip(context, needles))
                assert abs(where - depth) < tolerance, (name, item["id"], depth, where)
            positions = [context.find(n) for n in needles]
            assert positions == sorted(positions) and item["depths"] == sorted(item["depths"])
            if name == "ruler_vt":
                assert len(needles) == rs.VT_HOPS + 1 and context.count("VAR ") == 2 * rs.VT_HOPS + 1
                names = item["answers"]
                assert needles[0] == f"VAR {names[0]} = {item['query']}."
                assert needles[1:] == [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
            else:
                assert context.count(NEEDLE_HEAD) == len(needles) == fam.num_k * fam.num_v
                found = re.findall(NEEDLE_HEAD + r" ([a-z]+-[a-z]+) is: (\d{7})\.", context)
                assert len(found) == len(needles)
                keys = {k for k, _ in found}
                assert len(keys) == fam.num_k and len({v for _, v in found}) == len(needles)
                asked = [k for k in keys if k in item["query"]]
                assert len(asked) == fam.num_q
                assert sorted(item["answers"]) == sorted(v for k, v in found if k in asked)


def test_requests_fit_the_length_within_the_margin_and_use_rulers_templates(built, tokenizer):
    for name, items in built.items():
        fam = rs.FAMILIES[name]
        for item, req in zip(items, rs.requests(name, items)):
            assert req.max_new_tokens == fam.max_new_tokens and req.stop == ("\n\n",)
            assert n_tokens(tokenizer, req.prompt) + req.max_new_tokens <= item["length"] + fam.margin
            assert item["context"] in req.prompt and req.prompt.endswith(item["answer_prefix"])
    mk = rs.requests("ruler_mk", built["ruler_mk"])[0].prompt
    assert mk.startswith("A special magic number is hidden within the following text.")
    assert "What is the special magic number for" in mk                 # one value asked: singular
    mq = rs.requests("ruler_mq", built["ruler_mq"])[0].prompt
    assert mq.startswith("Some special magic numbers are hidden") and ", and " in mq
    vt = rs.requests("ruler_vt", built["ruler_vt"])[0].prompt
    assert vt.count("Memorize and track the chain(s)") == 2                # RULER's one-shot example first
    assert vt.endswith("5 variables are assigned the value {}, they are: ".format(built["ruler_vt"][0]["query"]))
    chat = rs.requests("ruler_mv", built["ruler_mv"][:1], apply_chat=lambda t: f"<u>{t}</u>")[0].prompt
    assert chat.startswith("<u>Some special") and chat.endswith("</u>The special magic numbers for "
                                                                 f"{built['ruler_mv'][0]['query']} mentioned in the provided text are")


def test_same_seed_same_items_other_seed_other_items(built, tokenizer):
    for name in ("ruler_mq", "ruler_vt"):
        again = rs.build_items(name, tokenizer, max_context=2048, per_cell=2, lengths=LENGTHS)
        assert again == built[name]
        other = rs.build_items(name, tokenizer, max_context=2048, per_cell=2, lengths=LENGTHS, seed=1)
        assert [i["context"] for i in other] != [i["context"] for i in again]
        assert all(a["answers"] != b["answers"] for a, b in zip(other, again))


def test_scoring_is_string_match_all(built):
    gen = lambda text: Generation(text, 7)   # noqa: E731
    for name in ("ruler_mv", "ruler_mq", "ruler_vt"):
        item = built[name][0]
        answers = item["answers"]
        texts = [" " + ", ".join(answers) + ".", " " + " and ".join(answers[:2]).lower(), " I do not know.",
                 " " + ", ".join(reversed(answers))]
        results = rs.score(name, [item] * 4, [gen(t) for t in texts])
        assert [r.score for r in results] == [1.0, 2 / len(answers), 0.0, 1.0]
        assert [r.correct for r in results] == [True, False, False, True]
        assert results[0].extra["length"] == item["length"] and results[0].task == name
    # multi-key: only the asked key's number counts; the distractors' numbers score nothing
    item = built["ruler_mk"][0]
    distractors = [re.search(r"is: (\d{7})\.", n).group(1) for n in item["needles"]]
    distractors = [v for v in distractors if v not in item["answers"]]
    assert len(distractors) == 3
    results = rs.score("ruler_mk", [item] * 3, [gen(" " + " ".join(distractors)), gen(f" {item['answers'][0]}."),
                                                gen(" " + " ".join(distractors + item["answers"]))])
    assert [r.score for r in results] == [0.0, 1.0, 1.0]


def test_the_registered_task_runs_through_the_chat_template(tokenizer):
    from quantstudy.evaluate.registry import EvalContext

    class Echo:   # answers with every 7-digit number in its prompt: all of multi-value's needles
        def generate(self, requests):
            self.prompts = [r.prompt for r in requests]
            return [Generation(" " + ", ".join(re.findall(r"\d{7}", r.prompt)), 9) for r in requests]

    spec, ctx, engine = get_task("ruler_mv"), EvalContext(tokenizer, limit=3, max_context=2048), Echo()
    items = spec.load(ctx)
    assert [spec.item_id(i) for i in items] == ["512-0", "1024-0", "512-1"]
    results = spec.run(engine, items, ctx)
    assert [r.score for r in results] == [1.0] * 3 and all(r.task == "ruler_mv" for r in results)
    assert spec.version_for(ctx) == "niah_multivalue-v1|chat" and "<|im_start|>" in engine.prompts[0]


def test_single_needle_items_have_their_stated_length_past_the_packaged_text(tokenizer):
    """niah_single-v2: the haystack repeats, so a 4096-token item is 4096 tokens (v1's were as
    long as the packaged text, ~2.9k tokens) and holds its needle once."""
    from quantstudy.evaluate.tasks import ruler

    items = ruler.build_items(tokenizer, 4096 + 64, per_cell=1, lengths=(4096,), depths=(0.5,))
    assert len(items) == 1
    assert abs(n_tokens(tokenizer, items[0]["context"]) - 4096) <= 4
    assert items[0]["context"].count(items[0]["value"]) == 1
