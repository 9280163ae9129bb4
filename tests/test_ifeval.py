"""IFEval-style task: the prompt file is valid for lm-eval's checkers, scoring is right and offline."""

import json
import os
import random
import subprocess
import sys
from itertools import combinations

import pytest

from quantstudy.errors import QuantstudyError
from quantstudy.inference.requests import GenerateRequest, Generation
from quantstudy.evaluate.tasks import ifeval


@pytest.fixture(scope="module")
def prompts():
    return ifeval.load_prompts()


@pytest.fixture(scope="module")
def registry():
    return ifeval._lm_eval()[1]


def by_key(prompts, key, ids):
    prompt = next(p for p in prompts if p["key"] == key)
    assert prompt["instruction_id_list"] == ids     # the case below was written for these instructions
    return prompt


def test_prompt_file_shape(prompts, registry):
    keys = [p["key"] for p in prompts]
    assert len(prompts) >= 100
    assert len(set(keys)) == len(keys) and all(isinstance(k, int) for k in keys)
    used = {i for p in prompts for i in p["instruction_id_list"]}
    assert used <= set(registry.INSTRUCTION_DICT)
    families = {i.split(":")[0] for i in registry.INSTRUCTION_DICT}
    assert {i.split(":")[0] for i in used} == families   # every family of instruction is exercised
    assert len(used) >= 20


def test_no_prompt_combines_conflicting_instructions(prompts, registry):
    conflicts = registry.INSTRUCTION_CONFLICTS
    for p in prompts:
        ids = p["instruction_id_list"]
        assert len(set(ids)) == len(ids), p["key"]
        for a, b in combinations(ids, 2):
            assert b not in conflicts[a] and a not in conflicts[b], (p["key"], a, b)


def test_every_instruction_builds_from_its_kwargs_without_random_defaults(prompts, registry):
    # lm-eval fills any missing/invalid kwarg with a *random* value; two seeds giving the same
    # arguments proves our kwargs fully determine every checker.
    for p in prompts:
        for instruction_id, kwargs in zip(p["instruction_id_list"], p["kwargs"]):
            built = []
            for seed in (0, 1):
                random.seed(seed)
                checker = registry.INSTRUCTION_DICT[instruction_id](instruction_id)
                checker.build_description(**kwargs)
                built.append(checker.get_instruction_args())
            assert built[0] == built[1], (p["key"], instruction_id)
            assert set(kwargs) <= set(checker.get_instruction_args_keys()), (p["key"], instruction_id)
            if "prompt_to_repeat" in kwargs:
                assert p["prompt"].startswith(kwargs["prompt_to_repeat"])


BULLETS5 = "\n".join(f"* Step {i}: do the next thing." for i in range(1, 6))
CASES = [
    # key, instruction ids, compliant response, non-compliant response
    (1005, ["detectable_format:number_bullet_lists"], BULLETS5, BULLETS5.rsplit("\n", 1)[0]),
    (1009, ["length_constraints:number_sentences"],
     "Plants absorb light. Chlorophyll captures it. Water is split. Oxygen is released. "
     "Carbon dioxide is fixed. Sugar is made.",
     "Plants absorb light. They then make sugar."),
    (1016, ["detectable_format:json_format"],
     '```json\n{"title": "Salt Roads", "author": "A. Reyes", "year": 1998, "genre": "history"}\n```',
     'Here is the book: {"title": "Salt Roads"}'),
    (1018, ["length_constraints:nth_paragraph_first_word"],
     "Cycling keeps you fit.\n\nMoreover, it saves money on fuel.\n\nIt is also good for the city.",
     "Cycling keeps you fit.\n\nAlso, it saves money on fuel.\n\nIt is also good for the city."),
    (1023, ["change_case:capital_word_frequency"],
     "You GOT this. Stay CALM and DO your best tomorrow.", "You got this. Sleep well tonight."),
    (1012, ["detectable_format:constrained_response"], "My answer is maybe.", "Probably not, to be honest."),
    (1021, ["combination:repeat_prompt"],
     "What is the boiling point of water at sea level? It is 100 degrees Celsius.",
     "It is 100 degrees Celsius."),
    (1027, ["language:response_language"],
     "J'aime l'automne parce que les feuilles changent de couleur et que l'air devient frais. "
     "C'est la saison des promenades en forêt et des soupes chaudes.",
     "I love autumn because the leaves change colour and the air becomes crisp and fresh."),
    (1098, ["detectable_format:number_bullet_lists", "detectable_format:title", "detectable_content:postscript"],
     "<<fish home>>\n* Buy a tank\n* Add a filter\n* Cycle the water\n* Add fish slowly\n\nP.S. Be patient.",
     "<<fish home>>\n* Buy a tank\n* Add a filter\n* Cycle the water\n* Add fish slowly"),
]


@pytest.mark.parametrize("key,ids,good,bad", CASES, ids=[str(c[0]) for c in CASES])
def test_hand_written_responses(prompts, key, ids, good, bad):
    prompt = by_key(prompts, key, ids)
    ok, wrong = ifeval.score([prompt, prompt], [good, bad])
    assert ok.correct and ok.score == 1.0 and all(ok.extra["strict"])
    assert not wrong.correct and wrong.score < 1.0
    assert ok.item_id == str(key) and ok.task == "ifeval"


def test_partial_compliance_scores_the_fraction_followed(prompts):
    prompt = by_key(prompts, 1098, CASES[-1][1])
    (result,) = ifeval.score([prompt], [CASES[-1][3]])   # bullets and title, no postscript
    assert result.extra["strict"] == [True, True, False]
    assert result.score == pytest.approx(2 / 3)
    assert not result.correct


def test_loose_forgives_a_chatty_first_line(prompts):
    prompt = by_key(prompts, 1002, ["change_case:english_lowercase"])
    (result,) = ifeval.score([prompt], ["Sure! Here is the answer:\na fridge pumps heat out of the "
                                        "box with a refrigerant that evaporates inside and condenses outside."])
    assert not result.correct and result.extra["strict"] == [False]
    assert result.extra["prompt_loose"] and result.extra["loose"] == [True]


def test_empty_response_follows_nothing(prompts):
    prompt = by_key(prompts, 1008, ["punctuation:no_comma"])
    (result,) = ifeval.score([prompt], ["   "])     # "no commas" is vacuously true, but lm-eval says no
    assert not result.correct


def test_requests_and_evaluate_with_a_fake_backend(prompts):
    class Backend:
        def generate(self, reqs):
            self.reqs = reqs
            return [Generation("My answer is maybe." if "Rust" in r.prompt else "", 7) for r in reqs]

    backend = Backend()
    results = ifeval.evaluate(backend, limit=12, apply_chat=lambda t: f"<user>{t}</user>", max_new_tokens=64)
    assert backend.reqs[0] == GenerateRequest(f"<user>{prompts[0]['prompt']}</user>", 64, ())
    assert [r.item_id for r in results] == [str(p["key"]) for p in prompts[:12]]
    assert [r.correct for r in results] == [p["key"] == 1012 for p in prompts[:12]]
    assert all(r.tokens == 7 for r in results)
    summary = ifeval.summary(results)
    assert summary["prompt_level_strict_acc"] == pytest.approx(1 / 12)
    n_instructions = sum(len(p["instruction_id_list"]) for p in prompts[:12])
    assert summary["inst_level_strict_acc"] == pytest.approx(1 / n_instructions)


def test_bad_input_is_a_one_line_error(prompts):
    with pytest.raises(QuantstudyError, match="2 prompts but 1 responses"):
        ifeval.score(prompts[:2], ["x"])
    with pytest.raises(QuantstudyError, match="limit"):
        ifeval.load_prompts(limit=0)


OFFLINE_SCRIPT = r"""
import json, os, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args)[:80])
    raise OSError("network disabled in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
import nltk
nltk.data.path[:] = [os.environ["NLTK_DATA"]]
try:
    nltk.data.find("tokenizers/punkt_tab")
    punkt_present = True
except LookupError:
    punkt_present = False
from quantstudy.evaluate.tasks import ifeval
lm_eval_at_import = "lm_eval" in sys.modules
prompts = {p["key"]: p for p in ifeval.load_prompts()}
texts = {1009: "One. Two. Three. Four. Five. Six.", 1010: "Sweet. Sticky. Golden.",
         1023: "You GOT this. Stay CALM and DO it.", 1104: "* START EACH WEEK WITH THE SHORTEST RUN OF THE PLAN AND THEN BUILD UP THE DISTANCE\n"
               "* TAKE A FULL REST DAY AFTER EVERY HARD WORKOUT\n* DRINK PLENTY OF WATER THROUGHOUT THE DAY"}
results = ifeval.score([prompts[k] for k in texts], list(texts.values()))
print(json.dumps({"attempts": attempts, "punkt_present": punkt_present, "lm_eval_at_import": lm_eval_at_import,
                  "strict": {r.item_id: r.extra["strict"] for r in results}}))
"""


def test_scoring_needs_no_network_and_no_nltk_data(tmp_path):
    env = dict(os.environ, NLTK_DATA=str(tmp_path), HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["punkt_present"]          # otherwise this test would prove nothing
    assert not out["lm_eval_at_import"]      # importing the task is cheap; lm-eval loads on first score
    assert out["attempts"] == []
    assert out["strict"] == {"1009": [True], "1010": [False], "1023": [True], "1104": [True, True, True]}
