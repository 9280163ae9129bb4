"""IFEval-style instruction following, scored with lm-eval's own IFEval checkers.

The prompts (`data/files/ifeval_prompts.jsonl`, read by `data.tasks`) were written for this project in the IFEval style;
each names lm-eval 0.4.13 instruction ids and their kwargs. Scoring calls lm-eval's
`test_instruction_following_strict` / `_loose`, so "strict" and "loose" mean exactly what
lm-eval users expect. What differs from a stock lm-eval run, and why:

* lm-eval's `instructions_util` downloads NLTK's `punkt_tab` when it is imported and loads
  the trained English punkt model to count sentences. Nothing may be downloaded here, so the
  import runs with `nltk.download` disabled and sentence splitting uses an untrained
  `PunktSentenceTokenizer()` (no data files). It splits on . ! ? like the trained model but
  does not know abbreviations ("e.g.", "Dr."), so sentence counts can differ on such text.
  Baseline and variants are scored identically, so recovery is unaffected.
* langdetect is seeded: unseeded it can label the same borderline text differently on two
  calls, which would show up as spurious flips between models.

lm-eval is imported lazily (on first `score`), so importing this module is cheap and can
never trigger a download.
"""

from __future__ import annotations

import contextlib
import functools
import io
import types
from collections.abc import Callable, Sequence

from quantstudy.data.tasks import ifeval_prompts
from quantstudy.errors import QuantstudyError
from quantstudy.items import ItemResult
from quantstudy.inference.requests import Engine, GenerateRequest

TASK = "ifeval"


def load_prompts(limit: int | None = None) -> list[dict]:
    """The packaged prompts in file order, the first `limit` of them if given."""
    if limit is not None and limit < 1:
        raise QuantstudyError(f"limit must be at least 1, got {limit}")
    return ifeval_prompts()[:limit]


def requests(prompts: Sequence[dict], max_new_tokens: int = 256,
             apply_chat: Callable[[str], str] | None = None) -> list[GenerateRequest]:
    """One greedy generation per prompt; no stop strings (lm-eval's IFEval uses `until: []`).

    `apply_chat` wraps the raw prompt in the model's chat template when the caller (not the
    engine) is responsible for it.
    """
    wrap = apply_chat or (lambda text: text)
    return [GenerateRequest(prompt=wrap(p["prompt"]), max_new_tokens=max_new_tokens) for p in prompts]


def score(prompts: Sequence[dict], responses: Sequence[str],
          num_tokens: Sequence[int] | None = None) -> list[ItemResult]:
    """Check each response against its prompt's instructions.

    `score` is the fraction of the prompt's instructions followed (strict), `correct` is
    prompt-level strict accuracy (all followed). Loose results and the per-instruction
    booleans go in `extra`. Note that the mean of `score` over prompts weights every prompt
    equally, whereas lm-eval's inst_level_*_acc pools instructions; `summary` gives lm-eval's.
    """
    if len(prompts) != len(responses):
        raise QuantstudyError(f"ifeval: {len(prompts)} prompts but {len(responses)} responses")
    if num_tokens is not None and len(num_tokens) != len(prompts):
        raise QuantstudyError(f"ifeval: {len(prompts)} prompts but {len(num_tokens)} token counts")
    utils = _lm_eval()[0]
    out = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        example = utils.InputExample(key=prompt["key"], instruction_id_list=prompt["instruction_id_list"],
                                     prompt=prompt["prompt"], kwargs=prompt["kwargs"])
        strict = utils.test_instruction_following_strict(example, response).follow_instruction_list
        loose = utils.test_instruction_following_loose(example, response).follow_instruction_list
        out.append(ItemResult(
            task=TASK, item_id=str(prompt["key"]), prediction=response, correct=all(strict),
            score=sum(strict) / len(strict), tokens=num_tokens[i] if num_tokens is not None else 0,
            extra={"instruction_id_list": list(prompt["instruction_id_list"]), "strict": strict,
                   "loose": loose, "prompt_loose": all(loose), "inst_loose": sum(loose) / len(loose)}))
    return out


def evaluate(engine: Engine, limit: int | None = None, apply_chat: Callable[[str], str] | None = None,
             max_new_tokens: int = 256) -> list[ItemResult]:
    """Generate greedily for every prompt and score the answers."""
    prompts = load_prompts(limit)
    generations = engine.generate(requests(prompts, max_new_tokens, apply_chat))
    if len(generations) != len(prompts):
        raise QuantstudyError(f"ifeval: engine returned {len(generations)} generations for {len(prompts)} prompts")
    return score(prompts, [g.text for g in generations], [g.num_tokens for g in generations])


def summary(results: Sequence[ItemResult]) -> dict[str, float]:
    """lm-eval's four IFEval metrics: prompt-level means, instruction-level pooled over all instructions."""
    if not results:
        raise QuantstudyError("ifeval: no results to summarise")
    strict = [b for r in results for b in r.extra["strict"]]
    loose = [b for r in results for b in r.extra["loose"]]
    return {
        "prompt_level_strict_acc": sum(r.correct for r in results) / len(results),
        "inst_level_strict_acc": sum(strict) / len(strict),
        "prompt_level_loose_acc": sum(r.extra["prompt_loose"] for r in results) / len(results),
        "inst_level_loose_acc": sum(loose) / len(loose),
    }


# --- lm-eval, made offline -------------------------------------------------------------------

@functools.cache
def _lm_eval():
    """Import lm-eval's IFEval modules without a download and patch their NLTK use; once per process.

    Returns (utils, instructions_registry).
    """
    import langdetect
    import nltk
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    real_download = nltk.download
    # instructions_util calls nltk.download("punkt_tab") at import when the model is absent and
    # prints "Downloaded punkt_tab" whatever happened; neither may happen here.
    nltk.download = lambda *args, **kwargs: False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from lm_eval.tasks.ifeval import instructions_registry, instructions_util, utils
    finally:
        nltk.download = real_download

    sentences = PunktSentenceTokenizer()
    words = NLTKWordTokenizer()

    def word_tokenize(text, language="english", preserve_line=False):
        # nltk.word_tokenize, with our data-free sentence splitter in place of punkt_tab.
        parts = [text] if preserve_line else sentences.tokenize(text)
        return [token for part in parts for token in words.tokenize(part)]

    # count_sentences goes through _get_sentence_tokenizer (trained punkt pickle); the capital
    # word checker calls instructions_util.nltk.word_tokenize (punkt_tab). Replace both in
    # lm-eval's module only, leaving the global nltk module as it was for everyone else.
    shim = types.ModuleType("nltk")
    shim.__dict__.update(vars(nltk))
    shim.word_tokenize = word_tokenize
    instructions_util.nltk = shim
    instructions_util._get_sentence_tokenizer = lambda: sentences
    langdetect.DetectorFactory.seed = 0
    return utils, instructions_registry
