"""HumanEval: offline data, lm-eval's prompt/stop/program conventions, and sandboxed scoring of all 164 problems."""

import importlib.util
import os

import pytest
import yaml

from quantstudy.errors import QuantstudyError
from quantstudy.inference.requests import GenerateRequest, Generation
from quantstudy.evaluate.tasks import humaneval


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


def lm_eval_yaml() -> dict:
    """lm-eval 0.4.13's installed humaneval.yaml, read without importing lm-eval (`!function` tags kept as text)."""
    spec = importlib.util.find_spec("lm_eval")
    path = os.path.join(spec.submodule_search_locations[0], "tasks", "humaneval", "humaneval.yaml")

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


def test_problems_load_offline_in_task_order(problems):
    assert len(problems) == 164
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all(p["prompt"] and p["test"] and p["entry_point"] and p["canonical_solution"] for p in problems)
    assert [p["task_id"] for p in humaneval.load_problems(limit=3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    mine = humaneval.load_problems(limit=1)
    mine[0]["prompt"] = "mutated"                          # callers get copies, the cache stays intact
    assert humaneval.load_problems(1)[0]["prompt"] == problems[0]["prompt"] != "mutated"
    with pytest.raises(QuantstudyError):
        humaneval.load_problems(limit=0)


def test_requests_and_program_follow_lm_eval(problems):
    config = lm_eval_yaml()
    assert config["doc_to_text"] == "{{prompt}}" and config["doc_to_target"] == "{{test}}\ncheck({{entry_point}})"
    assert humaneval.STOP == tuple(config["generation_kwargs"]["until"])
    assert humaneval.MAX_NEW_TOKENS == config["generation_kwargs"]["max_gen_toks"]
    reqs = humaneval.requests(problems[:2])
    assert reqs == [GenerateRequest(p["prompt"], 1024, humaneval.STOP) for p in problems[:2]]
    # lm-eval: build_predictions gives prompt + completion; code_eval appends "\n" + the target.
    p = problems[0]
    target = p["test"] + "\ncheck(" + p["entry_point"] + ")"
    assert humaneval.program(p, "    return True\n") == p["prompt"] + "    return True\n" + "\n" + target


def test_canonical_solutions_all_pass(problems):
    results = humaneval.score(problems, [p["canonical_solution"] for p in problems], timeout_s=10)
    failed = [(r.item_id, r.extra["status"]) for r in results if not r.correct]
    assert failed == []
    assert [r.item_id for r in results] == [p["task_id"] for p in problems]
    assert all(r.task == "humaneval" and r.score == 1.0 and r.loglik is None for r in results)


def test_a_wrong_body_fails_every_problem(problems):
    # `return None` is wrong for every problem: each test checks a real return value.
    results = humaneval.score(problems, ["    return None\n"] * len(problems), timeout_s=10)
    passed = [r.item_id for r in results if r.correct]
    assert passed == []
    assert all(r.score == 0.0 and r.extra["status"] == "failed" for r in results)


def test_hanging_completion_times_out_and_counts_wrong(problems):
    results = humaneval.score(problems[:2], ["    while True:\n        pass\n", problems[1]["canonical_solution"]],
                              timeout_s=1.0)
    assert [(r.correct, r.extra["status"]) for r in results] == [(False, "timeout"), (True, "passed")]


class CannedBackend:
    """A stand-in model that 'generates' the canonical solution followed by more code, cut at the stops."""

    def __init__(self, problems):
        self.answers = {p["prompt"]: p["canonical_solution"] for p in problems}
        self.seen: list[GenerateRequest] = []

    def generate(self, requests):
        self.seen.extend(requests)
        out = []
        for r in requests:
            text = self.answers[r.prompt] + "\n\ndef unrelated():\n    raise SystemExit(1)\n"
            cut = min([i for i in (text.find(s) for s in r.stop) if i >= 0] + [len(text)])
            out.append(Generation(text[:cut], num_tokens=len(text[:cut].split())))
        return out


def test_evaluate_with_a_backend_gets_164_of_164(problems):
    backend = CannedBackend(problems)
    results = humaneval.evaluate(backend, timeout_s=10)
    assert len(backend.seen) == 164 and all(r.stop == humaneval.STOP for r in backend.seen)
    assert sum(r.correct for r in results) == 164
    assert [r.item_id for r in results] == [p["task_id"] for p in problems]
    assert all(r.tokens > 0 and r.prediction.rstrip() == p["canonical_solution"].rstrip()
               for r, p in zip(results, problems))
    with pytest.raises(QuantstudyError):
        humaneval.score(problems[:2], ["    return 1\n"])
